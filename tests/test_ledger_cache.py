"""The ledger reuses the state it last wrote only while the file still
holds exactly that text: another process's write, or a write of its own
that failed, makes it read the file again."""

from __future__ import annotations

import os

import pytest

from xxftp_pyftpdlib import quota
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.quota import Ledger, QuotaExceeded


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "t" / ".xxftp").mkdir(parents=True)
    (tmp_path / "t" / ".xxftp" / "size").write_text("1000\n")
    return tmp_path


def _ledger(tree) -> Ledger:
    return Ledger(str(tree / "t"), ConfigStore(str(tree)))


def test_two_processes_see_each_other_s_changes(tree):
    a, b = _ledger(tree), _ledger(tree)  # as two server processes would have
    a.reserve("a1", 300, ahead=0)
    assert b.usage().free == 700
    b.reserve("b1", 600, ahead=0)
    with pytest.raises(QuotaExceeded):
        a.reserve("a2", 200, ahead=0)  # a's cached state must not be used: b wrote since
    b.finish("b1", 600)
    a.finish("a1", 300)
    assert a.usage().used == b.usage().used == 900
    assert a.usage().free == 100


def test_a_failed_write_does_not_leave_a_stale_state_behind(tree, monkeypatch):
    ledger = _ledger(tree)
    ledger.reserve("t1", 100, ahead=0)
    real_pwrite = os.pwrite

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quota.os, "pwrite", full_disk)
    with pytest.raises(OSError):
        ledger.reserve("t2", 500, ahead=0)  # changed in memory, never written
    monkeypatch.setattr(quota.os, "pwrite", real_pwrite)
    assert ledger.usage().free == 900  # what the file says, not what the failed call left
    assert ledger.reserve("t3", 900, ahead=0) == 900
