"""--workers N: pre-forked processes sharing the port."""

from __future__ import annotations

import ftplib
import os
import signal
import subprocess

from conftest import HOST, free_port, run_xxftpd, start_logged, temporaries, wait_until
from test_crash import _parallel_uploads, ledger_used
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger.scan import scan

KiB = 1024


def workers_of(pid: int) -> set[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if "xxftp_pyftpdlib" in line}


def test_workers_share_the_port_and_the_quota_and_stop_together(tree):
    home = tree.user("alice", password="pw", size="1M")
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), "--workers", "2",
                      wait_for_port=port)
    try:
        assert wait_until(lambda: len(workers_of(proc.pid)) == 2)
        payloads, results = _parallel_uploads([port])
        ok = [i for i, r in results.items() if r.startswith("226")]
        assert len(results) == 8 and len(ok) == 3, results
        used = scan(str(home), ConfigStore(str(tree.root)))
        assert used <= 1024 * KiB and ledger_used(home) == used and temporaries(home) == []
        # a worker that dies is replaced; the others keep serving
        victim = sorted(workers_of(proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: victim not in workers_of(proc.pid) and len(workers_of(proc.pid)) == 2)
        for _ in range(4):
            ftp = ftplib.FTP()
            ftp.connect(HOST, port, timeout=10)
            assert ftp.login("alice", "pw").startswith("230")
            ftp.quit()
        children = workers_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err
    for pid in children:  # no orphan left serving
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_workers_need_async(tree):
    tree.user("bob")
    proc = run_xxftpd("--root", str(tree.root), "--port", str(free_port()), "--workers", "2",
                      "--concurrency", "multi-thread")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode != 0 and "--workers" in err and "Traceback" not in err


def test_a_signal_to_the_whole_group_stops_workers_without_a_traceback(tree):
    """Ctrl-C (or systemd's control group) signals the parent and every
    worker; the parent then signals the workers again. Each stops cleanly."""
    tree.user("alice", password="pw")
    for attempt in range(3):
        proc, port = start_logged(tree.root, "--workers", "2", "--max-cons-per-ip", "0", start_new_session=True)
        clients = []
        try:
            for _ in range(20):
                ftp = ftplib.FTP()
                ftp.connect("127.0.0.1", port, timeout=10)
                ftp.login("alice", "pw")
                clients.append(ftp)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for ftp in clients:
                ftp.close()
        with open(proc.log, errors="replace") as f:
            log = f.read()
        assert proc.returncode == 0, log[-3000:]
        assert "Traceback" not in log and "failed" not in log, log[-3000:]
