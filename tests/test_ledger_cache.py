"""The ledger reuses the state it last wrote only while the file still
holds exactly that text: another process's write, or a write of its own
that failed, makes it read the file again."""

from __future__ import annotations

import os

import pytest

from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger import file as file_ledger
from xxftp_pyftpdlib.ledger import this_owner
from xxftp_pyftpdlib.ledger.file import FileLedger
from xxftp_pyftpdlib.quota import Pending, QuotaExceeded


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "t" / ".xxftp").mkdir(parents=True)
    (tmp_path / "t" / ".xxftp" / "size").write_text("1000\n")
    return tmp_path


def _ledger(tree) -> FileLedger:
    return FileLedger(str(tree / "t"), ConfigStore(str(tree)))


def _reserve(ledger: FileLedger, token: str, needed: int) -> int:
    """Register an upload of ``needed`` bytes and reserve exactly that."""
    ledger.begin(token, Pending(this_owner(), "delete", f"{ledger.root}/{token}", 0, 0), ahead=0)
    return ledger.reserve(token, needed, 0, ahead=0)


def _charge(ledger: FileLedger, token: str, delta: int) -> None:
    ledger.commit(token, lambda tx: delta)


def test_two_processes_see_each_other_s_changes(tree):
    a, b = _ledger(tree), _ledger(tree)  # as two server processes would have
    _reserve(a, "a1", 300)
    assert b.usage().free == 700
    _reserve(b, "b1", 600)
    with pytest.raises(QuotaExceeded):
        _reserve(a, "a2", 200)  # a's cached state must not be used: b wrote since
    _charge(b, "b1", 600)
    _charge(a, "a1", 300)
    assert a.usage().used == b.usage().used == 900
    assert a.usage().free == 100


def test_a_failed_write_does_not_leave_a_stale_state_behind(tree, monkeypatch):
    ledger = _ledger(tree)
    _reserve(ledger, "t1", 100)
    real_pwrite = os.pwrite

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_ledger.os, "pwrite", full_disk)
    with pytest.raises(OSError):
        _reserve(ledger, "t2", 500)  # changed in memory, never written
    monkeypatch.setattr(file_ledger.os, "pwrite", real_pwrite)
    assert ledger.usage().free == 900  # what the file says, not what the failed call left
    assert _reserve(ledger, "t3", 900) == 900
