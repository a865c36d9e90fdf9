"""bench/sweep.py end to end on the bundled sample: one run per size, labelled by size."""

import pandas as pd
from conftest import run_script


def test_quick_sweep_trains_each_size_once_and_labels_the_figure_by_size(tmp_path):
    runs_dir, out = tmp_path / "runs", tmp_path / "sweep"
    args = ("--quick", "--families", "mobilenet", "--runs-dir", runs_dir, "--out", out)
    first = run_script("bench/sweep.py", *args, check=True)
    summary = pd.read_csv(out / "runs.csv")
    labels = ["mobilenet-5k", "mobilenet-17k", "mobilenet-60k", "mobilenet-220k", "mobilenet-844k"]
    assert summary["run"].tolist() == labels
    assert summary["parameters"].is_monotonic_increasing
    assert summary["parameters"].iloc[-1] > 100 * summary["parameters"].iloc[0]
    assert (summary["epochs_run"] == 1).all() and summary["best_val_accuracy"].between(0, 1).all()
    assert (out / "parameters_vs_accuracy.png").stat().st_size > 10_000
    assert first.stdout.count("train_mobilenet.py") == 5
    again = run_script("bench/sweep.py", *args, check=True)
    assert "train_mobilenet.py" not in again.stdout
    assert sorted(path.parent.parent.name for path in runs_dir.glob("*/*/metrics.json")) == sorted(labels)
