"""Slow password hashes: low priority, and their memory given back."""

from __future__ import annotations

import ftplib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HOST, free_port, run_xxftpd, wait_until
from xxftp_pyftpdlib import hashpool, passwords

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _nice(tid: int) -> int:
    """The nice value of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat(5); fields[0] is field 3


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@linux_only
def test_hash_threads_take_idle_cpu_only_and_nothing_else_does(tree, start_server, connect):
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    srv = start_server(tree.root)
    connect(srv.port, "alice", "pw")  # a slow login: the pool exists
    workers = [t for t in threading.enumerate() if t.name.startswith("xxftpd-login_")]
    assert workers, "the slow login ran in no pool thread"
    assert all(os.sched_getscheduler(t.native_id) == os.SCHED_IDLE for t in workers)
    others = [t for t in threading.enumerate() if not t.name.startswith("xxftpd-login")]
    assert all(os.sched_getscheduler(t.native_id) == os.SCHED_OTHER for t in others)
    base = _nice(threading.main_thread().native_id)
    assert all(_nice(t.native_id) == base for t in others)


def test_a_login_starved_of_idle_cpu_is_still_checked(tree, start_server, connect, monkeypatch):
    """When the idle pool can't run (the CPU is busy), an overdue check goes
    to the overdue pool: the login ends in about OVERDUE seconds, right or wrong."""
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    blocked = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    blocked.submit(release.wait, 30)  # the only idle thread is busy
    monkeypatch.setattr(hashpool, "pool", lambda: blocked)
    monkeypatch.setattr(hashpool, "OVERDUE", 0.3)
    srv = start_server(tree.root)
    try:
        t0 = time.monotonic()
        ftp = connect(srv.port)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login("alice", "wrong")
        assert ftp.login("alice", "pw").startswith("230")
        assert time.monotonic() - t0 < 5
        if sys.platform.startswith("linux"):
            overdue = [t for t in threading.enumerate() if t.name.startswith("xxftpd-login-overdue")]
            assert overdue and all(_nice(t.native_id) >= hashpool.OVERDUE_NICE for t in overdue)
    finally:
        release.set()
        blocked.shutdown(wait=True)


@linux_only
def test_slow_logins_give_their_memory_back(tree):
    """scrypt needs 16 MiB a hash; 40 logins over the pool must not keep it."""
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)

    def login() -> None:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=60)
        ftp.login("alice", "pw")
        ftp.quit()

    try:
        login()
        before = _rss_mib(proc.pid)
        for _ in range(5):
            threads = [threading.Thread(target=login) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        # Under load a login's second copy (the idle pool's, when the overdue
        # pool answered first) may still be hashing: its 16 MiB are in use,
        # not kept. Wait for it to end before measuring.
        wait_until(lambda: _rss_mib(proc.pid) - before < 8, timeout=30)
        grown = _rss_mib(proc.pid) - before
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    # kept in the threads' heaps, it was 16 MiB per pool thread (48 MiB measured on 2 cores)
    assert grown < 8, f"the server grew by {grown:.1f} MiB over 40 scrypt logins"
