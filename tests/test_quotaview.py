"""The read-only view of quota trees (metrics, status page): no server needed."""

from __future__ import annotations

import fcntl
import os

from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger.file import FileLedger
from xxftp_pyftpdlib.quotaview import QuotaView


def test_quota_view_reads_without_writing(tree):
    home = tree.user("alice", size="1K")
    tree.user("bob")
    tree.user("dave", size="lots")
    before = sorted(p for p in tree.root.rglob("*"))
    view = QuotaView(str(tree.root), ttl=0)
    trees = {t.user: t for t in view.trees()}
    assert set(trees) == {"alice", "dave"}
    assert trees["alice"].limit == 1024 and trees["alice"].usage is None  # no ledger yet: no figures
    assert trees["dave"].limit is None
    assert sorted(p for p in tree.root.rglob("*")) == before
    (home / ".xxftp" / "ledger").write_text('{"used": 100, "pending": {}, "intents": []}')
    (home / ".xxftp" / "ledger").chmod(0o600)
    alice = {t.user: t for t in view.trees()}["alice"]
    assert alice.usage is not None and (alice.usage.used, alice.usage.reserved) == (100, 0)
    assert alice.as_dict()["free"] == 924


def test_a_ledger_locked_for_long_or_not_ours_is_not_read(tree):
    home = tree.user("alice", size="1K")
    ledger = home / ".xxftp" / "ledger"
    ledger.write_text('{"used": 10, "pending": {}, "intents": []}')
    ledger.chmod(0o600)
    peek = FileLedger(str(home), ConfigStore(str(tree.root))).glance
    assert peek().used == 10
    fd = os.open(ledger, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a rescan, say
        assert peek(tries=2) is None
    finally:
        os.close(fd)
    assert peek().used == 10
    ledger.chmod(0o666)  # writable by others: never read
    assert peek() is None
    ledger.unlink()
    os.mkfifo(ledger, 0o600)  # never blocks the reader
    assert peek() is None
