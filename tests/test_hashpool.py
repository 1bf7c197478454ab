"""Slow password hashes: low priority, and their memory given back."""

from __future__ import annotations

import ftplib
import sys
import threading

import pytest

from conftest import HOST, free_port, run_xxftpd
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
def test_hash_threads_run_at_low_priority_and_nothing_else_does(tree, start_server, connect):
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    srv = start_server(tree.root)
    connect(srv.port, "alice", "pw")  # a slow login: the pool exists
    workers = [t for t in threading.enumerate() if t.name.startswith("xxftpd-login")]
    assert workers, "the slow login ran in no pool thread"
    assert all(_nice(t.native_id) == hashpool.NICE for t in workers)
    base = _nice(threading.main_thread().native_id)
    assert base < hashpool.NICE
    others = [t for t in threading.enumerate() if not t.name.startswith("xxftpd-login")]
    assert all(_nice(t.native_id) == base for t in others)


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
        grown = _rss_mib(proc.pid) - before
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    # kept in the threads' heaps, it was 16 MiB per pool thread (48 MiB measured on 2 cores)
    assert grown < 8, f"the server grew by {grown:.1f} MiB over 40 scrypt logins"
