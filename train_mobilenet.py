"""Train the depthwise-separable MobileNet on FER2013.

    python train_mobilenet.py --data ../shared/data/fer2013/train.csv.xz --alpha 1.0

The default network has 59,607 parameters: residual stages of depthwise-separable blocks in
mini-Xception's layout (16, 32, 64, 144 filters) and a global-average-pooling head;
--alpha scales every width. --architecture hw8 gives the 73,095-parameter MobileNet of the
HW8 report (eight plain blocks and a Dense head). Outputs go to runs/mobilenet-<time>/.
"""

from fersuite import cli

cli.quiet_backend_logs()

DEFAULTS = {
    "epochs": 100,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 2e-3,
    "schedule": "cosine",
    "warmup_epochs": 3,
    "patience": 0,
}


def build_network(config, preprocessing):
    from fersuite import INPUT_SHAPE, NUM_CLASSES
    from fersuite.models import build_hw8_mobilenet, build_mobilenet

    if config["architecture"] == "hw8":
        options = {key: config[key] for key in ("stem", "blocks", "dense") if config.get(key) is not None}
        return build_hw8_mobilenet(
            INPUT_SHAPE, NUM_CLASSES, preprocessing, alpha=config["alpha"], dropout=config["dropout"], **options
        )
    options = {key: config[key] for key in ("stem", "stages", "blocks_per_stage") if config.get(key) is not None}
    return build_mobilenet(
        INPUT_SHAPE, NUM_CLASSES, preprocessing, alpha=config["alpha"], dropout=config["dropout"], **options
    )


def main():
    parser = cli.training_parser(__doc__, DEFAULTS)
    network = parser.add_argument_group("network")
    network.add_argument(
        "--architecture",
        choices=("residual", "hw8"),
        default="residual",
        help="hw8 = the HW8 report's network (default: %(default)s)",
    )
    network.add_argument("--alpha", type=cli.finite, default=1.0, help="width multiplier (default: %(default)s)")
    network.add_argument(
        "--dropout", type=cli.fraction, default=None, help="before the classifier (default: 0.1 residual, 0.2 hw8)"
    )
    network.add_argument(
        "--stem",
        type=cli.int_list,
        default=None,
        help="stem convolution filters before alpha (default: 8,8 residual; 8 hw8)",
    )
    network.add_argument(
        "--stages",
        type=cli.int_list,
        default=None,
        help="residual: filters per stage before alpha (default: 16,32,64,144)",
    )
    network.add_argument(
        "--blocks-per-stage",
        type=cli.positive_int,
        default=None,
        help="residual: separable blocks per stage (default: 2)",
    )
    network.add_argument(
        "--blocks",
        type=cli.int_list,
        default=None,
        help="hw8: pointwise filters per block before alpha; blocks 3, 5, 7 have stride 2 "
        "(default: 16,16,32,32,64,64,128,128)",
    )
    network.add_argument(
        "--dense", type=cli.positive_int, default=None, help="hw8: Dense width before alpha (default: 64)"
    )
    args = parser.parse_args()
    if args.alpha <= 0:
        parser.error(f"--alpha must be positive, got {args.alpha}")
    other = ("stages", "blocks_per_stage") if args.architecture == "hw8" else ("blocks", "dense")
    for name in other:
        if getattr(args, name) is not None:
            parser.error(f"--{name.replace('_', '-')} does not apply to --architecture {args.architecture}")
    if args.stages is not None and len(args.stages) > 4:
        parser.error(f"--stages: at most 4 stages, each halves the 48-pixel face (got {len(args.stages)})")
    if args.dropout is None:
        args.dropout = 0.1 if args.architecture == "residual" else 0.2
    if args.architecture == "hw8" and args.stem is not None:
        if len(args.stem) != 1:
            parser.error("--stem takes one width with --architecture hw8")
        args.stem = args.stem[0]

    from fersuite import training

    training.train("mobilenet", vars(args), build_network, resume=args.resume)


if __name__ == "__main__":
    cli.run(main)
