"""`--help` on every entry script: usage at once, before any Keras or TensorFlow import."""

import subprocess
import sys

import pytest
from conftest import PROJECT

ENTRY_SCRIPTS = ("train_cnn.py", "train_dnn.py", "train_mobilenet.py", "predict.py", "report_plots.py")

HELP_PROBE = """
import runpy, sys
script = sys.argv[1]
sys.argv = [script, "--help"]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as stopped:
    assert stopped.code in (0, None), stopped.code
print("loaded:", sorted(name for name in ("keras", "tensorflow", "jax", "torch") if name in sys.modules))
"""


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_prints_usage_without_loading_a_backend(script):
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, script], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout[:200]
    assert result.stdout.rstrip().endswith("loaded: []"), result.stdout[-300:]


BENCHMARKS = ("augmentation", "contrast", "gpu", "gpu_session", "inference", "loading", "sweep", "throughput")
MODULES = (*(f"bench.{name}" for name in BENCHMARKS), *(f"fersuite.{name}" for name in ("data", "ship", "teachers")))


@pytest.mark.parametrize("module", MODULES)
def test_help_of_a_module_names_the_command_that_runs_it(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} "), result.stdout[:200]


@pytest.mark.parametrize("script", ["bench/sweep.py", "bench/gpu.py"])
def test_help_of_a_benchmark_run_by_its_path(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script.split('/')[-1]} "), result.stdout[:200]
