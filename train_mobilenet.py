"""Train the depthwise-separable MobileNet on FER2013.

    python train_mobilenet.py --data ../shared/data/fer2013/train.csv.xz --alpha 1.0

The default network is the 73,095-parameter MobileNet of the HW8 report (an 8-filter stem,
eight depthwise-separable blocks of 16..128 filters); --alpha scales every width.
Outputs go to runs/mobilenet-<time>/.
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
    from fersuite.models import build_mobilenet

    return build_mobilenet(
        INPUT_SHAPE,
        NUM_CLASSES,
        preprocessing,
        alpha=config["alpha"],
        stem=config["stem"],
        blocks=config["blocks"],
        dense=config["dense"],
        dropout=config["dropout"],
    )


def main():
    from fersuite.models import MOBILENET_BLOCKS

    parser = cli.training_parser(__doc__, DEFAULTS)
    network = parser.add_argument_group("network")
    network.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default: %(default)s)")
    network.add_argument("--stem", type=cli.positive_int, default=8, help="stem filters before alpha (default: %(default)s)")
    network.add_argument("--blocks", type=cli.int_list, default=MOBILENET_BLOCKS, help="pointwise filters per block before alpha; blocks 3, 5, 7 have stride 2 (default: 16,16,32,32,64,64,128,128)")
    network.add_argument("--dense", type=cli.positive_int, default=64, help="Dense width before alpha (default: %(default)s)")
    network.add_argument("--dropout", type=cli.fraction, default=0.2, help="(default: %(default)s)")
    args = parser.parse_args()
    if args.alpha <= 0:
        parser.error(f"--alpha must be positive, got {args.alpha}")

    from fersuite import training

    training.train("mobilenet", vars(args), build_network, resume=args.resume)


if __name__ == "__main__":
    cli.run(main)
