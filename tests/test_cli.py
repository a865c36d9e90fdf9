"""cli.run: how a script ends on Ctrl-C, in its work and after it."""

import signal
import subprocess
import sys
import time

import pytest
from conftest import PROJECT

from fersuite import cli


@pytest.fixture
def terminal_ctrl_c():
    """SIGINT as in a terminal, even when the tests run under nohup (which leaves it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_that_a_library_turned_into_another_error_still_reads_interrupted(capsys, terminal_ctrl_c):
    """Keras's int8 Dense under PyTorch, interrupted, raised ValueError('Invalid dtype: object')."""

    def main():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ValueError("Invalid dtype: object") from None

    with pytest.raises(SystemExit) as stopped:
        cli.run(main)
    assert stopped.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back: not a script's own process

    with pytest.raises(ValueError, match="a bug"):  # without Ctrl-C, an error stays what it is
        cli.run(lambda: (_ for _ in ()).throw(ValueError("a bug")))
    cli.run(lambda: None)  # as a script run in IPython or `python -i`: Ctrl-C works again after it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SHUTTING_DOWN = """
import atexit, signal, sys, time
sys.path.insert(0, {project!r})
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when the tests run under nohup
from fersuite import cli

def main():
    atexit.register(time.sleep, 3)  # a slow shutdown, as PyTorch's
    print("wrote it", flush=True)

cli.run(main)
"""


def test_ctrl_c_after_a_script_is_done_does_not_spoil_its_shutdown():
    process = subprocess.Popen(
        [sys.executable, "-c", SHUTTING_DOWN.format(project=str(PROJECT))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "wrote it\n"
    time.sleep(0.5)  # main has returned; the 3 s shutdown has begun
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0 and "KeyboardInterrupt" not in stderr, stderr
