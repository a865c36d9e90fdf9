"""Data loading: decompressing the CSV, parsing it, and loading it from the suite's uint8 cache.

    python -m bench.loading                      # train.csv.xz, 3 rounds: 2.5 minutes on a shared CPU
    python -m bench.loading --quick              # test.csv.xz, 1 round
    python -m bench.loading --data ../shared/data/fer2013/test.csv.xz --rounds 5

Figures (best and median of --rounds; each round measures all five in turn):
  decompress   lzma read of the whole file into memory, nothing parsed
  parse        fersuite.data.parse_csv (pandas reads the .xz itself, so this includes decompression)
  first load   fersuite.data.load_table into an empty temporary FERSUITE_CACHE_DIR: hash + parse + write
  cached load  the same call again: hash + np.load of the .npz cache
  hash         fersuite.data.file_digest alone, the part of a cached load that reads the CSV
Targets (on the wall-clock medians): parse - decompress <= 5 s; cached load <= 0.5 s. The CPU
seconds of this process are printed too: on a shared machine the wall time also counts the waits
for a core. After the first round the file is in the operating system's page cache, as it is for
a user who loads it twice.
"""

import lzma
import os
import statistics
import tempfile
import time

from bench import common
from fersuite.cli import DEFAULT_TEST, DEFAULT_TRAIN
from fersuite.data import file_digest, load_table, parse_csv

PARSE_TARGET = 5.0
CACHED_TARGET = 0.5


def seconds(call):
    """(wall seconds, CPU seconds of this process, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def decompress(path):
    with lzma.open(path) as handle:
        return len(handle.read())


def load_with_fresh_cache(path):
    """First and second load_table in a new empty cache directory."""
    previous = os.environ.get("FERSUITE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="fersuite-bench-") as directory:
        os.environ["FERSUITE_CACHE_DIR"] = directory
        try:
            first, table = seconds(lambda: load_table(path))
            cached, again = seconds(lambda: load_table(path))
        finally:
            if previous is None:
                del os.environ["FERSUITE_CACHE_DIR"]
            else:
                os.environ["FERSUITE_CACHE_DIR"] = previous
    if len(again.pixels) != len(table.pixels):
        raise SystemExit("cached load returned a different number of rows")
    return first, cached, len(table.pixels)


def main():
    parser = common.parser(__doc__, __spec__)
    parser.add_argument("--data", default=str(DEFAULT_TRAIN), help="FER CSV, any compression (default: %(default)s)")
    args = parser.parse_args()
    if args.quick:
        args.data, args.rounds = str(DEFAULT_TEST), 1

    machine = common.MachineReport()
    machine.start()
    size = os.path.getsize(args.data)
    print(f"{args.data}: {size / 1e6:.1f} MB on disk, {args.rounds} rounds")
    times = {name: [] for name in ("decompress", "parse", "first load", "cached load", "hash")}
    for _ in range(args.rounds):
        elapsed, raw = seconds(lambda: decompress(args.data))
        times["decompress"].append(elapsed)
        elapsed, _ = seconds(lambda: parse_csv(args.data))
        times["parse"].append(elapsed)
        first, cached, rows = load_with_fresh_cache(args.data)
        times["first load"].append(first)
        times["cached load"].append(cached)
        times["hash"].append(seconds(lambda: file_digest(args.data))[0])
    print(f"{rows:,} rows, {raw / 1e6:.1f} MB of CSV text; wall seconds (best, median) and CPU seconds (median)")
    wall = {name: [pair[0] for pair in pairs] for name, pairs in times.items()}
    cpu = {name: statistics.median(pair[1] for pair in pairs) for name, pairs in times.items()}
    for name, values in wall.items():
        print(
            f"  {name:12s} best {min(values):7.3f} s   median {statistics.median(values):7.3f} s"
            f"   CPU {cpu[name]:7.3f} s"
        )

    beyond = statistics.median(wall["parse"]) - statistics.median(wall["decompress"])
    cached = statistics.median(wall["cached load"])
    print(
        f"parse beyond decompression (medians): {beyond:.2f} s (CPU {cpu['parse'] - cpu['decompress']:.2f} s), "
        f"target <= {PARSE_TARGET} s: {'met' if beyond <= PARSE_TARGET else 'MISSED'}"
    )
    print(
        f"cached load (median): {cached:.3f} s (CPU {cpu['cached load']:.3f} s), target <= {CACHED_TARGET} s: "
        f"{'met' if cached <= CACHED_TARGET else 'MISSED'}"
    )
    machine.end()


if __name__ == "__main__":
    main()
