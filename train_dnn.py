"""Train a fully-connected DNN on FER2013, sized to a parameter budget.

    python train_dnn.py --data ../shared/data/fer2013/train.csv.xz --params 5927239 --depth 3

By default the budget is the default CNN's 5,927,239 parameters, so the DNN and the CNN
compare at equal size (the HW3 question); --units fixes the widths instead.
Augmentation is half the convolutional families' (5 degrees, 5 % shifts and zoom) and dropout
0.1: a network without convolutions has no translation invariance to lean on, and with the
full augmentation and dropout 0.3 it fitted its training images no better than validation
after 100 epochs, and these settings scored 3.5-4.7 points higher (bench/RESULTS.md).
Mixed precision is off by default, even on a GPU: there float16 made its epoch slower, not faster.
Outputs go to runs/dnn-<time>/.
"""

import math

from fersuite import cli

cli.quiet_backend_logs()

DEFAULT_CNN_PARAMETERS = 5_927_239
DEFAULTS = {
    "epochs": 100,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup_epochs": 3,
    "patience": 0,
    "rotation_range": 5.0,
    "width_shift_range": 0.05,
    "height_shift_range": 0.05,
    "zoom_range": 0.05,
    # Float16 slows the DNN: 0.47 s per epoch against 0.33 in float32 on an H200 (bench/RESULTS.md, section 5).
    "mixed_precision": "off",
}


def build_network(config, preprocessing):
    from fersuite import INPUT_SHAPE, NUM_CLASSES
    from fersuite.models import build_dnn, dnn_units_for_budget

    units = config["units"] or dnn_units_for_budget(config["params"], INPUT_SHAPE, NUM_CLASSES, config["depth"])
    return build_dnn(INPUT_SHAPE, NUM_CLASSES, preprocessing, units=units, dropout=config["dropout"])


def main():
    parser = cli.training_parser(__doc__, DEFAULTS)
    network = parser.add_argument_group("network")
    network.add_argument(
        "--params",
        type=cli.positive_int,
        default=DEFAULT_CNN_PARAMETERS,
        help="parameter budget: the widest DNN of --depth equal layers within it "
        "(default: %(default)s, the default CNN's)",
    )
    network.add_argument(
        "--depth", type=cli.positive_int, default=3, help="number of hidden Dense layers (default: %(default)s)"
    )
    network.add_argument(
        "--units",
        type=cli.int_list,
        default=None,
        help="explicit hidden widths, e.g. 1024,512 (overrides --params/--depth)",
    )
    network.add_argument("--dropout", type=cli.fraction, default=0.1, help="(default: %(default)s)")
    args = parser.parse_args()

    from fersuite import INPUT_SHAPE, NUM_CLASSES, training
    from fersuite.models import dnn_parameter_count

    if not args.units and not args.resume:
        smallest = dnn_parameter_count(math.prod(INPUT_SHAPE), NUM_CLASSES, [1] * args.depth)
        if smallest > args.params:
            parser.error(
                f"--params {args.params:,}: the smallest {args.depth}-layer DNN has {smallest:,} parameters; "
                "give a larger budget, a smaller --depth or --units"
            )

    training.train("dnn", vars(args), build_network, resume=args.resume)


if __name__ == "__main__":
    cli.run(main)
