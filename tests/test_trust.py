"""What the server trusts on disk: ledgers and ``.xxftp`` files a user with
a shell could write must not make it act outside a home (over real sockets)."""

from __future__ import annotations

import ftplib
import json
import os

import pytest

from conftest import download, ledger_used, start_logged, stop_logged, store

NOBODY = 65534


def forged_ledger(victim: str, target: str, crash: str = "keep-new", temp: bool = True) -> str:
    """A ledger naming a dead owner's upload whose file is ``victim``."""
    entry = {"host": os.uname().nodename, "pid": 4_000_000, "start": None, "crash": crash, "target": target,
             "temp": victim if temp else None, "old": 0, "ino": os.stat(victim).st_ino, "keys": [],
             "bytes": 0, "written": 0, "since": 0.0, "touched": 0.0, "waiting": False}
    return json.dumps({"used": 0, "intents": [], "pending": {"x": entry}}, sort_keys=True)


@pytest.mark.parametrize("crash", ["keep-new", "delete", "truncate"])
def test_a_forged_ledger_never_touches_a_file_outside_its_tree(tree, start_server, connect, crash):
    alice = tree.user("alice", password="pw", size="10M")
    bob = tree.user("bob", password="bobsecret")
    victim = bob / ".xxftp" / "password"
    before = victim.read_bytes()
    sub = tree.folder("alice/sub")
    tree.xxftp(sub, "size", "10M\n")
    target = str(sub / "stolen.txt") if crash != "truncate" else str(victim)
    tree.xxftp(sub, "ledger", forged_ledger(str(victim), target, crash, temp=crash != "truncate"))
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/sub/trigger.txt", b"hi").startswith("226")  # settles the ledger of /sub
    assert victim.read_bytes() == before
    assert not (sub / "stolen.txt").exists()
    with pytest.raises(ftplib.error_perm):
        download(ftp, "/sub/stolen.txt")
    assert ledger_used(sub) == 2  # rebuilt by a scan
    bob_ftp = ftplib.FTP()
    bob_ftp.connect("127.0.0.1", server.port, timeout=10)
    try:
        assert bob_ftp.sendcmd("USER bob").startswith("331")
    finally:
        bob_ftp.close()
    assert alice.exists()


def test_a_forged_home_ledger_is_not_settled_at_start(tree, tmp_path):
    alice = tree.user("alice", password="pw", size="10M")
    bob = tree.user("bob", password="bobsecret")
    victim = bob / ".xxftp" / "password"
    before = victim.read_bytes()
    tree.xxftp(alice, "ledger", forged_ledger(str(victim), str(alice / "stolen.txt")))
    proc, port = start_logged(tree.root)
    try:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("alice", "pw")
        assert ftp.sendcmd("SITE QUOTA").startswith("2")
        ftp.quit()
    finally:
        log = stop_logged(proc)
    assert victim.read_bytes() == before
    assert not (alice / "stolen.txt").exists()
    assert "outside the tree" in log


def test_a_ledger_of_another_user_is_replaced_not_read(tree, start_server, connect):
    alice = tree.user("alice", password="pw", size="10K")
    tree.file("alice/a.bin", b"x" * 1000)
    ledger = tree.xxftp(alice, "ledger", json.dumps({"used": 10240, "intents": [], "pending": {}}))
    os.chown(ledger, NOBODY, NOBODY)  # written by a shell user: it claims the tree is full
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/b.bin", b"y" * 1000).startswith("226")
    st = os.stat(ledger)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert ledger_used(alice) == 2000
