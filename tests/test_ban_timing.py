"""A ban lasts --ban-time from the moment the refusal that earns it is
sent: the log line and the 421 a new connection gets agree."""

from __future__ import annotations

import ftplib
import re
import time

import pytest

from conftest import HOST, start_logged, stop_logged


def greet(port: int) -> str:
    ftp = ftplib.FTP()
    try:
        return ftp.connect(HOST, port, timeout=15)
    except ftplib.error_temp as err:
        return str(err)
    finally:
        ftp.close()


def test_ban_time_counts_from_the_refusal(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--ban-after", "1", "--ban-time", "5")
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=15)
        ftp.sendcmd("USER alice")
        started = time.monotonic()
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd("PASS wrong")
        delay = time.monotonic() - started
        assert delay > 1  # pyftpdlib's failed-login delay (3 s) came first
        ftp.close()
        refused = greet(port)
        assert refused.startswith("421 Too many failed logins")
        assert re.search(r"try again in (\d+) seconds", refused).group(1) == "5", refused
        time.sleep(4.2)
        assert greet(port).startswith("421")  # still within 5 s of the refusal
        time.sleep(1.2)
        assert greet(port).startswith("220")
    finally:
        log = stop_logged(proc)
    assert "banned for 5 seconds after failed logins" in log
