"""The ``xxftpd`` command: version, input errors, start-up log, clean stops."""

from __future__ import annotations

import ftplib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import HOST, download, free_port, listing, run_xxftpd, upload, wait_until
from xxftp_pyftpdlib import __version__

STOP_WITHIN = 5  # seconds a signalled server may take to exit


def run_cli(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """Run ``python -m xxftp_pyftpdlib ARGS`` to completion.

    A server that starts although it should not never exits on its own:
    the timeout then fails the test (and kills the server).
    """
    return subprocess.run(
        [sys.executable, "-m", "xxftp_pyftpdlib", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xxftpd: error:"), lines[0]
    assert len(lines[0]) > len("xxftpd: error:") + 5, lines[0]
    return lines[0]


def listen_args(root: Path, port: int) -> list[str]:
    return ["--root", str(root), "--host", HOST, "--port", str(port)]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[str, str]:
    """Send ``sig``; the server must exit 0 within STOP_WITHIN seconds."""
    proc.send_signal(sig)
    return stopped(proc, signal.Signals(sig).name)


def stopped(proc: subprocess.Popen, cause: str) -> tuple[str, str]:
    """The server must exit 0, without a traceback, within STOP_WITHIN seconds of ``cause``."""
    try:
        out, err = proc.communicate(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"xxftpd did not stop within {STOP_WITHIN}s of {cause}:\n{err}")
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{err}"
    assert "Traceback" not in err + out, err
    return out, err


@pytest.fixture
def processes():
    """Servers started by a test; killed at the end if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def served(tree):
    tree.user("alice", password="secret")
    tree.file("alice/hello.txt", b"hello world")
    tree.user("bob")
    return tree


# --- version


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"xxftpd {__version__}\n"
    assert result.stderr == ""


def test_console_script_version():
    script = Path(sysconfig.get_path("scripts")) / "xxftpd"
    command = str(script) if script.exists() else shutil.which("xxftpd")
    assert command, "the xxftpd console script is not installed"
    result = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"xxftpd {__version__}"


# --- bad input: one line on stderr, non-zero status, no traceback


def test_missing_root(tmp_path):
    line = assert_one_error_line(run_cli(*listen_args(tmp_path / "nowhere", free_port())))
    assert "nowhere" in line


def test_root_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    line = assert_one_error_line(run_cli(*listen_args(path, free_port())))
    assert "afile" in line


def test_busy_port(served):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = assert_one_error_line(run_cli(*listen_args(served.root, port)))
    assert str(port) in line


@pytest.mark.parametrize("args", [
    ["--passive-ports", "abc"],
    ["--passive-ports", "5-1"],
    ["--passive-ports", "0-10"],
    ["--passive-ports", "70000-70001"],
    ["--passive-ports", "100"],
    ["--passive-ports", "1-"],
    ["--masquerade-address", "not-an-ip"],
    ["--masquerade-address", "999.1.1.1"],
    ["--concurrency", "bogus"],
    ["--concurrency", ""],
    ["--max-cons", "-3"],
    ["--timeout", "soon"],
    ["--log-level", "loud"],
], ids=lambda a: " ".join(a))
def test_bad_option_values(served, args):
    line = assert_one_error_line(run_cli(*listen_args(served.root, free_port()), *args))
    assert args[0] in line


@pytest.mark.parametrize("port", ["-1", "99999", "65536", "x", ""])
def test_bad_port(served, port):
    line = assert_one_error_line(run_cli("--root", str(served.root), "--host", HOST, "--port", port))
    assert "--port" in line


def test_unknown_option(served):
    assert_one_error_line(run_cli(*listen_args(served.root, free_port()), "--no-such-option"))


def test_unwritable_log_file(served, tmp_path):
    log_file = tmp_path / "missing-folder" / "xxftpd.log"
    line = assert_one_error_line(
        run_cli(*listen_args(served.root, free_port()), "--log-file", str(log_file)))
    assert "missing-folder" in line


# --- a good start and clean stops


def start(processes, root: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = run_xxftpd(*listen_args(root, port), *extra, wait_for_port=port)
    processes.append(proc)
    return proc, port


def greeted(port: int) -> None:
    """The server answers: its loop is running, start-up is over."""
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    assert ftp.getwelcome().startswith("220")
    ftp.quit()


def startup_lines(err: str, root: Path, port: int) -> list[str]:
    """Log lines that name both the listening address and the served root."""
    roots = {str(root), os.path.realpath(root)}
    return [line for line in err.splitlines()
            if f"{HOST}:{port}" in line and any(r in line for r in roots)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_start_logs_address_and_root_then_stops_on_signal(served, processes, sig):
    proc, port = start(processes, served.root)
    greeted(port)
    _, err = stop(proc, sig)
    assert len(startup_lines(err, served.root, port)) == 1, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_as_soon_as_the_port_accepts_connections(served, processes, sig):
    """Once clients can connect, a signal is a clean stop, whatever start-up
    work is still under way (a root with many users and quotas to look at)."""
    for i in range(60):
        served.user(f"user{i}", size="100000")
        served.file(f"user{i}/file.txt", b"x" * 100)
    proc, _ = start(processes, served.root)
    stop(proc, sig)


def test_log_file_receives_startup_line(served, processes, tmp_path):
    log_file = tmp_path / "xxftpd.log"
    proc, port = start(processes, served.root, "--log-file", str(log_file))
    greeted(port)
    _, err = stop(proc)
    assert err == ""
    assert len(startup_lines(log_file.read_text(), served.root, port)) == 1, log_file.read_text()


@pytest.mark.parametrize("concurrency", ["async", "multi-thread", "multi-proc"])
def test_concurrency_models_serve_and_stop(served, processes, concurrency):
    proc, port = start(processes, served.root, "--concurrency", concurrency)
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    try:
        assert ftp.login("alice", "secret").startswith("230")
        assert any(line.endswith(" hello.txt") for line in listing(ftp))
        assert download(ftp, "hello.txt") == b"hello world"
        upload(ftp, "up.txt", b"uploaded")
        assert (served.root / "alice" / "up.txt").read_bytes() == b"uploaded"
        other = ftplib.FTP()
        other.connect(HOST, port, timeout=10)
        assert other.sendcmd("USER bob").startswith("230")
        other.quit()
        # A client still connected must not keep the server from stopping.
        stop(proc)
    finally:
        ftp.close()


@pytest.mark.parametrize("concurrency", ["multi-thread", "multi-proc"])
def test_concurrency_models_stop_when_idle(served, processes, concurrency):
    proc, port = start(processes, served.root, "--concurrency", concurrency)
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    ftp.login("alice", "secret")
    assert listing(ftp, "NLST") == ["hello.txt"]
    ftp.quit()
    _, err = stop(proc)
    assert len(startup_lines(err, served.root, port)) == 1, err


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def test_multi_proc_one_connection_process_terminated_leaves_others_serving(served, processes):
    """SIGTERM to the process of one connection (an admin ending a stuck
    client) ends that connection only: the others and new ones are served."""
    proc, port = start(processes, served.root, "--concurrency", "multi-proc")
    greeted(port)
    assert wait_until(lambda: len(_children(proc.pid)) <= 1)
    idle = _children(proc.pid)
    first = ftplib.FTP()
    first.connect(HOST, port, timeout=5)
    assert first.sendcmd("USER bob").startswith("230")
    assert wait_until(lambda: len(_children(proc.pid) - idle) == 1)
    (victim,) = _children(proc.pid) - idle
    second = ftplib.FTP()
    second.connect(HOST, port, timeout=5)
    try:
        assert second.login("alice", "secret").startswith("230")
        os.kill(victim, signal.SIGTERM)
        assert wait_until(lambda: victim not in _children(proc.pid))
        for _ in range(3):
            assert second.sendcmd("NOOP").startswith("200")
            time.sleep(0.2)
        assert listing(second, "NLST") == ["hello.txt"]
        third = ftplib.FTP()
        third.connect(HOST, port, timeout=5)
        assert third.sendcmd("USER bob").startswith("230")
        third.quit()
        second.quit()
    finally:
        first.close()
        second.close()
    assert proc.poll() is None
    stop(proc)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread of another process (Linux)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
    if libc.syscall(SYS_tgkill, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "aarch64"),
                    reason="tgkill is a Linux system call")
def test_stop_when_the_signal_lands_on_another_thread(served, processes):
    """The kernel may hand a process' SIGTERM to any of its threads (here a
    hash pool thread), or deliver it just before the loop blocks in epoll.
    Either way an idle server must still wake up and stop."""
    from xxftp_pyftpdlib import passwords
    passwords.write(str(served.root / "alice/.xxftp/password"), passwords.scrypt_hash("secret"))
    proc, port = start(processes, served.root)
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    ftp.login("alice", "secret")  # a slow hash: checked on a pool thread
    ftp.quit()
    tasks = os.listdir(f"/proc/{proc.pid}/task")
    others = [int(t) for t in tasks if int(t) != proc.pid]
    assert others, tasks
    time.sleep(0.2)  # the loop is idle, blocked in epoll
    _tgkill(proc.pid, others[0], signal.SIGTERM)
    _, err = stopped(proc, "a SIGTERM to a hash pool thread")
    assert "xxftpd stopped" in err, err
