"""Benchmarks that print their figures; run from the project root as `python -m bench.<name>`.

TensorFlow's start-up log lines are silenced here, before any script imports a backend.
"""

from fersuite import cli

cli.quiet_backend_logs()
