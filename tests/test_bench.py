"""bench/sweep.py and bench/gpu_session.py end to end on the bundled sample; the benchmarks' step timer."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
from conftest import PROJECT, run_script

from fersuite import cli


def test_quick_sweep_trains_each_size_once_and_labels_the_figure_by_size(tmp_path):
    """Run from another folder with relative paths, which the sizes' training processes must share."""
    runs_dir, out = tmp_path / "runs", tmp_path / "sweep"
    labels = ["mobilenet-5k", "mobilenet-844k"]
    args = ("--quick", "--sizes", ",".join(labels), "--runs-dir", "runs", "--out", "sweep")
    first = run_script("bench/sweep.py", *args, check=True, cwd=tmp_path)
    summary = pd.read_csv(out / "runs.csv")
    assert summary["run"].tolist() == labels
    assert summary["parameters"].is_monotonic_increasing
    assert summary["parameters"].iloc[-1] > 100 * summary["parameters"].iloc[0]
    assert (summary["epochs_run"] == 1).all() and summary["best_val_accuracy"].between(0, 1).all()
    assert (summary["status"] == "finished").all()
    assert (out / "parameters_vs_accuracy.png").stat().st_size > 10_000
    assert first.stdout.count("train_mobilenet.py") == 2 and "train_cnn.py" not in first.stdout
    again = run_script("bench/sweep.py", *args, check=True, cwd=tmp_path)
    assert "train_mobilenet.py" not in again.stdout
    assert sorted(path.parent.parent.name for path in runs_dir.glob("*/*/metrics.json")) == sorted(labels)
    longer = run_script("bench/sweep.py", *args[1:], "--data", cli.SAMPLE, "--epochs", 2, "--dry-run", cwd=tmp_path)
    assert longer.stdout.count("train_mobilenet.py") == 2  # 1-epoch runs do not stand in for 2-epoch ones
    other = tmp_path / "mine.csv"
    other.write_bytes(Path(cli.SAMPLE).read_bytes())
    told = run_script("bench/sweep.py", *args, "--data", other, "--epochs", 3, "--dry-run", cwd=tmp_path)
    assert f"--data {other} " in told.stdout and "--epochs 3 " in told.stdout  # --quick gives way to them
    unknown = run_script("bench/sweep.py", "--sizes", "mobilenet-5k,cnn-9", "--dry-run")
    assert unknown.returncode == 2 and "error: unknown size cnn-9;" in unknown.stderr


def test_sweep_reuses_only_a_run_of_the_same_settings_that_neither_stopped_nor_diverged(tmp_path):
    """A size whose flags or epochs changed, or whose run's loss became NaN, is trained again; a
    project, data file or runs folder moved elsewhere is not a reason to."""
    from bench import sweep

    settings = ["--epochs", "1", "--quiet", "--alpha", "0.25"]
    run = tmp_path / "mobilenet-5k" / "mobilenet-1"
    run.mkdir(parents=True)
    recorded = "/old/project/train_mobilenet.py --data /old/train.csv --runs-dir /old/runs/mobilenet-5k"
    (run / "config.json").write_text(json.dumps({"data_digest": "d", "command": f"{recorded} {' '.join(settings)}"}))

    def found(digest="d", settings=settings, **metrics):
        (run / "metrics.json").write_text(json.dumps({"interrupted": False, "diverged_epoch": None, **metrics}))
        return sweep.finished_run(tmp_path, "mobilenet-5k", digest, settings)

    assert found() == run
    older = "/p/train_mobilenet.py --data /d.csv --epochs 1 --runs-dir /r --quiet --alpha 0.25"  # sessions 3-27
    (run / "config.json").write_text(json.dumps({"data_digest": "d", "command": older}))
    assert found() == run
    spaced = ["/my project/train_mobilenet.py", "--data", "/my data/train.csv", "--runs-dir", "/my runs/mobilenet-5k"]
    (run / "config.json").write_text(json.dumps({"data_digest": "d", "command": shlex.join([*spaced, *settings])}))
    assert found() == run  # a path with a space in it no longer spoils the comparison
    assert found(interrupted=True) is None
    assert found(diverged_epoch=1) is None
    assert found(settings=[*settings[:-1], "0.5"]) is None
    assert found(settings=["--epochs", "11", *settings[2:]]) is None
    assert found(digest="e") is None


def test_a_family_typo_or_a_failed_training_run_ends_a_benchmark_with_one_error_line(tmp_path):
    for script in ("bench/sweep.py", "bench/gpu.py"):
        typo = run_script(script, "--families", "cnn,mobilenets")
        assert typo.returncode == 2 and typo.stderr.startswith("error: --families: unknown mobilenets;"), typo.stderr
    failed = run_script("bench/sweep.py", "--sizes", "mobilenet-5k", "--data", tmp_path / "none.csv", cwd=tmp_path)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert "none.csv: no such file" in errors[0] and errors[1].startswith("error: train_mobilenet.py stopped with exit")


def test_augmentation_benchmark_cycles_too_few_images_to_whole_batches():
    """With fewer images than a batch it divided by zero (and with a short last batch it counted
    that batch of ImageDataGenerator's as a full one). It also prints issue 6's two verdicts."""
    args = ["--data", cli.SAMPLE, "--images", 20, "--batch-size", 32, "--batches", 2, "--warmup", 1, "--steps", 1]
    result = subprocess.run(
        [sys.executable, "-m", "bench.augmentation", *map(str, args), "--rounds", "1"],
        capture_output=True, text=True, cwd=PROJECT, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ImageDataGenerator.flow" in result.stdout
    assert "/ ImageDataGenerator -> fit = " in result.stdout and "target >= 10: " in result.stdout
    assert "/ no augmentation = " in result.stdout and "target >= 0.9: " in result.stdout


CHILD = """
import signal, sys, time
def interrupted(*_):
    print("SIGINT", flush=True)
    time.sleep(0.3)  # writing its metrics
    sys.exit(130)
signal.signal(signal.SIGINT, interrupted if {handles} else signal.SIG_IGN)
time.sleep({seconds})
"""


def test_runs_past_the_deadline_get_one_ctrl_c_then_are_killed():
    """A lent machine's command is killed at its limit with everything in it: --stop-by interrupts the
    runs first (once each: a second Ctrl-C would cut a run's metrics short), then ships what there is."""
    import io
    import threading
    import time

    from bench.gpu_session import copy_lines, wait_for

    log, processes = io.StringIO(), {}
    for name, handles, seconds in (("done", True, 0), ("late", True, 60), ("deaf", False, 60)):
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(handles=handles, seconds=seconds)], stdout=subprocess.PIPE, text=True
        )
        reader = threading.Thread(target=copy_lines, args=(name, process.stdout, log), daemon=True)
        reader.start()
        processes[name] = (process, reader)
    started = time.time()
    codes, stopped = wait_for(processes, stop_by=started + 3, grace=1.0)
    assert codes == {"done": 0, "late": 130, "deaf": -9} and stopped == ["late", "deaf"]
    assert log.getvalue().count("SIGINT") == 1 and "[late] SIGINT" in log.getvalue()
    assert time.time() - started < 10


def test_a_stop_by_time_that_has_passed_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_session", "--quick", "--out", "x", "--stop-by", "520"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2 and "--stop-by 520 has passed" in result.stderr


def test_quick_gpu_session_trains_side_by_side_and_packs_what_comes_back(tmp_path):
    import json
    import tarfile

    out = tmp_path / "out"
    runs = ["--run", "cnn", "--run", "mobilenet", "--run", "KERAS_BACKEND=jax cnn --seed 1"]
    line = [
        sys.executable, "-m", "bench.gpu_session", "--quick", "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
        "--int8", *runs,
    ]
    result = subprocess.run(line, cwd=PROJECT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    names = ["cnn", "mobilenet", "cnn-2"]
    assert sorted(path.name for path in out.iterdir()) == [
        "cnn-2.keras", "cnn.keras", "runs.log", "runs.tar.gz", "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary["runs"]] == names and summary["runs"][2]["flags"].endswith("--seed 1")
    assert summary["runs"][2]["environment"] == {"KERAS_BACKEND": "jax"} and summary["runs"][0]["environment"] == {}
    backends = {
        path.parent.parent.name: json.loads(path.read_text())["versions"]["backend"]
        for path in (tmp_path / "runs").glob("*/*/*/config.json")
    }
    assert backends == {"cnn": keras.backend.backend(), "mobilenet": keras.backend.backend(), "cnn-2": "jax"}
    for row in summary["runs"]:
        assert row["returncode"] == 0 and row["shipped"] and row["epochs"] >= 1 and 0 <= row["best_val_accuracy"] <= 1
    log = (out / "runs.log").read_text()
    assert all(f"[{name}] best validation accuracy" in log for name in names)
    with tarfile.open(out / "runs.tar.gz") as archive:
        packed = archive.getnames()
        archive.extract("mobilenet.keras", tmp_path / "back", filter="data")
    assert sum(name.endswith("/history.csv") for name in packed) == 3 and len(packed) == 13

    from fersuite.evaluation import load_model

    shipped = load_model(out / "cnn.keras")  # trained under mixed_float16, as on a GPU
    assert shipped.get_layer("block1_conv1").__class__.__name__ == "Int8Conv2D"
    assert {layer.compute_dtype for layer in shipped.layers} == {"float32"}
    mobilenet = load_model(tmp_path / "back" / "mobilenet.keras")  # came back inside runs.tar.gz
    assert mobilenet.name == "mobilenet" and mobilenet.output_shape == (None, 7)

    refusals = (
        ("resnet", 1, "the family must be one of"),
        ("KERAS_BACKEND=jax", 1, "the family must be one of"),
        ("dnn", 6, "at most 5 CNN and DNN --run"),
        ("mobilenet", 9, "at most 8 --run"),
    )
    for spec, count, message in refusals:
        refused = subprocess.run(
            [sys.executable, "-m", "bench.gpu_session", "--out", str(tmp_path / "no"), *["--run", spec] * count],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert refused.returncode == 2 and message in refused.stderr and not (tmp_path / "no").exists()


def test_step_timer_times_the_batches_after_the_warm_up():
    import keras
    import numpy as np

    from bench import common
    from fersuite.training import one_hot

    model = common.compile_like_suite(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(7, activation="softmax")])
    )
    faces, targets = np.ones((20, 4), "float32"), one_hot(np.arange(20) % 7)
    rate = common.fit_rate(model, faces, targets, warmup=2, steps=3, batch_size=4)
    assert rate.images == 3 * 4 and rate.wall > 0


def test_quick_contrast_scores_the_copy_and_a_raw_stand_in_as_the_suite_reads_it():
    result = subprocess.run(
        [sys.executable, "-m", "bench.contrast", "--quick"], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    flatness_line = next(line for line in lines if line.startswith("median flatness"))
    pairs = [part.rsplit(" ", 1) for part in flatness_line.split(": ")[1].split("; ")]
    flatness = {name: float(value) for name, value in pairs}
    assert flatness["copy"] < 10 < flatness["raw stand-in"] and flatness["raw, as read"] < 10
    scores = {line[:15].strip(): float(line.split()[-1]) for line in lines if line.startswith("  ")}
    assert list(scores) == ["copy", "copy again", "raw stand-in", "raw, as read"]
    assert all(0 <= score <= 1 for score in scores.values())


def test_contrast_refuses_data_without_labels_in_one_line(tmp_path):
    unlabeled = tmp_path / "test.csv"
    unlabeled.write_text("id,feature\n0," + " ".join(["7"] * 2304) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "bench.contrast", "--data", str(unlabeled)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no labeled rows to hold out for validation" in result.stderr and "Traceback" not in result.stderr
