"""Stateful property test of quota accounting on its own (no server):
random uploads (new, overwrite, append; committed, aborted, over quota),
deletes and moves between two trees keep ``used`` equal to the files on
disk and never above the limit."""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger import Quotas, move
from xxftp_pyftpdlib.ledger.scan import entry_keys, scan
from xxftp_pyftpdlib.quota import TEMP_PREFIX, QuotaExceeded
from xxftp_pyftpdlib.uploads import BROKEN, QUOTA, Upload

LIMIT = 4000
NAMES = st.sampled_from(["a", "b", "c", "d"])
TREES = st.sampled_from([0, 1])


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = tempfile.mkdtemp()
        self.trees = []
        for i in range(2):
            folder = os.path.join(self.base, f"t{i}")
            os.makedirs(os.path.join(folder, ".xxftp"))
            with open(os.path.join(folder, ".xxftp", "size"), "w") as f:
                f.write(str(LIMIT))
            self.trees.append(folder)
        self.store = ConfigStore(self.base)
        self.quotas = Quotas(self.store)
        self.active: list[Upload] = []

    def teardown(self) -> None:
        for upload in self.active:
            upload.finish(False, BROKEN)
        shutil.rmtree(self.base)

    def path(self, tree: int, name: str) -> str:
        return os.path.join(self.trees[tree], name)

    @precondition(lambda self: len(self.active) < 3)
    @rule(tree=TREES, name=NAMES, mode=st.sampled_from(["wb", "ab"]),
          upload_mode=st.sampled_from(["atomic", "atomic-resume", "standard"]))
    def start(self, tree, name, mode, upload_mode):
        target = self.path(tree, name)
        if any(u.target == target for u in self.active):
            return  # one writer per file, as FTP clients do
        ledger = self.quotas.ledger(self.trees[tree])
        self.active.append(Upload(target, name, mode, upload_mode, ledger))

    @precondition(lambda self: self.active)
    @rule(index=st.integers(0, 2), size=st.integers(1, 1500))
    def write(self, index, size):
        upload = self.active[index % len(self.active)]
        try:
            upload.write(b"x" * size)
        except QuotaExceeded:
            upload.finish(False, QUOTA)
            self.active.remove(upload)

    @precondition(lambda self: self.active)
    @rule(index=st.integers(0, 2), ok=st.booleans())
    def finish(self, index, ok):
        upload = self.active.pop(index % len(self.active))
        upload.finish(ok, BROKEN)

    @rule(tree=TREES, name=NAMES)
    def delete(self, tree, name):
        path = self.path(tree, name)
        if not os.path.isfile(path) or any(u.target == path for u in self.active):
            return
        ledger = self.quotas.limited(self.trees[tree])
        size, keys = entry_keys(path)
        ledger.change(-size, path, lambda: os.remove(path), keys=keys)

    @rule(src_tree=TREES, src=NAMES, dst_tree=TREES, dst=NAMES)
    def move(self, src_tree, src, dst_tree, dst):
        old, new = self.path(src_tree, src), self.path(dst_tree, dst)
        if old == new or not os.path.isfile(old) or any(u.target in (old, new) for u in self.active):
            return
        try:
            move(self.quotas.ledger(self.trees[src_tree]), self.quotas.ledger(self.trees[dst_tree]),
                 lambda: entry_keys(old), lambda: entry_keys(new), old, lambda: os.rename(old, new))
        except QuotaExceeded:
            assert os.path.isfile(old)

    @invariant()
    def within_limit(self):
        for folder in self.trees:
            usage = self.quotas.limited(folder).usage()
            assert usage.used + usage.reserved <= LIMIT
            assert usage.used <= LIMIT

    @invariant()
    def used_matches_disk_when_idle(self):
        if self.active:
            return
        for folder in self.trees:
            assert self.quotas.limited(folder).usage().used == scan(folder, self.store)
            assert not [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]


TestLedger = LedgerMachine.TestCase
TestLedger.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
