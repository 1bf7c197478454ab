"""A refused login logs its real cause (a wrong password, a password file
that can't be read or is in no known format) while the client gets the
very same answer for each."""

from __future__ import annotations

import ftplib
import os
import re

from conftest import HOST, start_logged, stop_logged, wait_until


def refusal(port: int, user: str) -> str:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=15)
    try:
        assert ftp.sendcmd(f"USER {user}").startswith("331")
        try:
            return ftp.sendcmd("PASS guess")
        except ftplib.error_perm as err:
            return str(err)
    finally:
        ftp.close()


def test_the_log_says_why_the_client_sees_no_difference(tree):
    tree.user("alice", password="secret")
    tree.user("bob")
    tree.xxftp(tree.root / "bob", "password", "not a hash at all\n")
    tree.user("carol")
    os.makedirs(tree.root / "carol/.xxftp/password")  # can't be read as a file
    proc, port = start_logged(tree.root)
    try:
        replies = {user: refusal(port, user) for user in ("alice", "bob", "carol")}
        assert wait_until(lambda: open(proc.log).read().count("login refused for") >= 3)
    finally:
        log = stop_logged(proc)
    assert replies["alice"].startswith("530 ") and len(set(replies.values())) == 1, replies
    reasons = dict(re.findall(r"login refused for '(\w+)': (.*)", log))
    assert reasons["alice"] == "wrong password"
    assert reasons["bob"] == f"password file {tree.root}/bob/.xxftp/password in no known format"
    assert reasons["carol"] == f"password file {tree.root}/carol/.xxftp/password unreadable: Is a directory"
