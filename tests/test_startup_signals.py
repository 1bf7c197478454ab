"""SIGTERM at any moment of start-up is a clean stop (exit 0, no traceback),
including while the command still imports pyftpdlib; a command that is not
a server keeps Python's own handling."""

from __future__ import annotations

import configparser
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import HOST, free_port, run_xxftpd

REPO = Path(__file__).resolve().parent.parent

# Records the SIGTERM handler at the moment pyftpdlib is first imported.
PROBE = textwrap.dedent("""
    import importlib, signal, sys

    class Probe:
        def find_spec(self, name, path=None, target=None):
            if name == "pyftpdlib" and "seen" not in vars(Probe):
                Probe.seen = signal.getsignal(signal.SIGTERM)
                print("handler at pyftpdlib import:", Probe.seen in (signal.SIG_DFL, None), flush=True)
            return None

    sys.meta_path.insert(0, Probe())
    sys.argv = ["xxftpd", "--version"]
    how = sys.argv_how = {how!r}
    if how == "-m":
        import runpy
        runpy.run_module("xxftp_pyftpdlib", run_name="__main__", alter_sys=True)
    else:
        module, _, func = how.partition(":")
        sys.exit(getattr(importlib.import_module(module), func)())
""")


def entry_point() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    line = cfg["options.entry_points"]["console_scripts"].strip()
    name, _, target = line.partition("=")
    assert name.strip() == "xxftpd"
    return target.strip()


@pytest.mark.parametrize("how", ["-m", "console script"])
def test_stop_signals_are_held_before_pyftpdlib_is_imported(how):
    how = entry_point() if how == "console script" else how
    run = subprocess.run([sys.executable, "-c", PROBE.format(how=how)], capture_output=True, text=True, timeout=60)
    assert "handler at pyftpdlib import: False" in run.stdout, run.stdout + run.stderr
    assert "xxftpd" in run.stdout


def sigterm_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (/proc: SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


@pytest.mark.parametrize("delay_ms", [0, 20, 50, 100, 200, 300, 500])
def test_sigterm_early_in_start_up_exits_0(tmp_path, delay_ms):
    (tmp_path / "root" / "alice").mkdir(parents=True)
    log = tmp_path / "xxftpd.log"
    proc = run_xxftpd("--root", str(tmp_path / "root"), "--host", HOST, "--port", str(free_port()),
                      "--log-file", str(log))
    time.sleep(delay_ms / 1000)
    # Before the interpreter runs the command's first statement nothing can
    # catch the signal; from then on, every stop is a clean one.
    deadline = time.monotonic() + 10
    while not sigterm_caught(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    text = err + (log.read_text() if log.exists() else "")
    assert proc.returncode == 0, text
    assert "Traceback" not in text


def test_an_admin_command_keeps_the_default_sigterm(tmp_path):
    (tmp_path / "root" / "alice").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(tmp_path / "root"),
                             "passwd", "alice", "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # waiting for the password on stdin
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM
