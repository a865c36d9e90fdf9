"""Training throughput (images/s) of each family, with and without the suite's augmentation,
against a plain-Keras reference measured in the same run.

    python -m bench.throughput                   # about 2.5 minutes on 2 idle cores, more when shared
    python -m bench.throughput --quick           # smoke run
    python -m bench.throughput --families cnn --steps 20 --rounds 5

Families are the networks train_*.py builds by default (with Adam and the builders' dropout, which
do not change the speed): the 5.9M-parameter CNN, the DNN sized to the CNN's parameter count
(fersuite.models.dnn_units_for_budget) and the 59,607-parameter MobileNet, each with
the suite's preprocessing (RandomAffine with the training defaults, Rescaling) and fed uint8
NumPy arrays in batches of 128; the CNN also with random erasing 0.5 added, as train_cnn.py
trains it by default since session 17. The reference is the same CNN network without preprocessing
layers, fitted on a float32 array divided by 255 in NumPy: what a plain `model.fit` costs.

Each figure is model.fit over --warmup + --steps batches of the training CSV, timed over the last
--steps (the first batches trace and compile), the median of --rounds rounds in which every model
takes its turn, so a change in the machine's load falls on all of them. The MobileNet and the DNN
time STEPS_FACTOR times more batches: their steps are about 7 and 35 times shorter than the CNN's, and
a timed window of a tenth of a second measures mostly noise. Ratios (of medians): augmented / not
augmented per family (issue 6's target: within 10 %), and suite / reference for the CNN (at least
as fast).
"""

from bench import common
from fersuite import AUGMENTATION, INPUT_SHAPE, NUM_CLASSES
from fersuite.cli import DEFAULT_TRAIN, chosen_names, positive_int
from fersuite.data import load_table
from fersuite.models import BUILDERS, build_cnn, dnn_units_for_budget, preprocessing_layers
from fersuite.training import one_hot

FAMILIES = ("cnn", "dnn", "mobilenet")
STEPS_FACTOR = {"cnn": 1, "mobilenet": 5, "dnn": 25}
WITHIN = 0.9  # augmented / not augmented
VARIANTS = {"augmented": {"augment": AUGMENTATION}, "not augmented": {}}
CNN_DEFAULT = {"augmented + erasing": {"augment": AUGMENTATION, "erasing": 0.5}}  # train_cnn.py's default augmentation


def build(family, preprocessing, cnn_parameters):
    options = {}
    if family == "dnn":
        options["units"] = dnn_units_for_budget(cnn_parameters, INPUT_SHAPE, NUM_CLASSES)
    return common.compile_like_suite(BUILDERS[family](INPUT_SHAPE, NUM_CLASSES, preprocessing, **options))


def main():
    parser = common.parser(__doc__, __spec__)
    parser.add_argument("--data", default=str(DEFAULT_TRAIN), help="labeled CSV (default: %(default)s)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=common.BATCH_SIZE, help="(default: %(default)s)")
    parser.add_argument(
        "--warmup", type=positive_int, default=1, help="untimed batches first, each round (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=4, help="timed batches, each round (default: %(default)s)"
    )
    args = parser.parse_args()
    families = chosen_names(parser, args.families, FAMILIES)
    if args.quick:
        args.warmup, args.steps, args.rounds = 1, 2, 2

    machine = common.MachineReport()
    machine.start()
    print(
        f"model.fit: timed batches of {args.batch_size} after {args.warmup} warm-up batches, "
        f"median (min-max) of {args.rounds} rounds; images per second and per CPU-second of this process"
    )
    table = load_table(args.data)
    steps = {family: args.steps * STEPS_FACTOR[family] for family in families}
    print("timed batches: " + ", ".join(f"{family} {count}" for family, count in steps.items()))
    count = (args.warmup + max(steps.values())) * args.batch_size
    pixels, labels = common.repeat_to(table.pixels, table.labels, count)
    targets = one_hot(labels)
    cnn_parameters = build_cnn(INPUT_SHAPE, NUM_CLASSES).count_params()

    def fit(model, inputs, family):
        return lambda: common.fit_rate(model, inputs, targets, args.warmup, steps[family], args.batch_size)

    measures, parameters = {}, {}
    for family in families:
        for variant, options in {**VARIANTS, **(CNN_DEFAULT if family == "cnn" else {})}.items():
            model = build(family, preprocessing_layers(**options, seed=0), cnn_parameters)
            measures[family, variant] = fit(model, pixels, family)
            parameters[family] = model.count_params()
    if "cnn" in families:
        reference = common.compile_like_suite(build_cnn(INPUT_SHAPE, NUM_CLASSES))
        rows = (args.warmup + steps["cnn"]) * args.batch_size
        measures["reference", "plain x/255"] = fit(reference, pixels[:rows].astype("float32") / 255.0, "cnn")
        parameters["reference"] = reference.count_params()

    results = common.interleaved(measures, args.rounds)
    for (family, variant), rates in results.items():
        print(f"  {family:10s} {parameters[family]:>10,} parameters  {variant:19s} {common.spread(rates)}")
    for family, variant in results:
        if family != "reference" and variant != "not augmented":
            print(
                f"  {family} {variant} / not augmented = "
                f"{common.ratio(results[family, variant], results[family, 'not augmented'], WITHIN)}"
            )
    if "cnn" in families:
        reference = results["reference", "plain x/255"]
        for variant in ("not augmented", "augmented", *CNN_DEFAULT):
            print(f"  cnn suite ({variant}) / reference = {common.ratio(results['cnn', variant], reference)}")
    machine.end()


if __name__ == "__main__":
    main()
