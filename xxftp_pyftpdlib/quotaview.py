"""The quota trees of a server root as a read-only view (metrics, status page).

Rules that live here:

- A view never writes a tree: ledgers are only peeked at
  (``FileLedger.glance``: nothing created, settled or scanned), through a
  configuration store of its own (the serving code's caches and locks are
  not touched from the view's thread).
- Only limited trees are listed (an unlimited tree keeps no usage); a
  tree whose size file is invalid is listed with no limit.
- A view is read at most once per ``ttl`` seconds, whoever asks; a
  ledger that can't be read gives a tree without figures, and a root
  that can't be surveyed gives the last list read: a bad file never
  breaks a scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .config import ConfigStore
from .ledger.file import FileLedger
from .quota import Usage
from .survey import trees

__all__ = ["TreeView", "QuotaView"]

log = logging.getLogger("xxftpd")


@dataclass(frozen=True)
class TreeView:
    user: str
    tree: str  # the FTP path of the tree in its user's home: "/" or "/docs"
    folder: str  # the real folder
    limit: int | None  # bytes; None: the size file is invalid
    usage: Usage | None  # None: not readable now

    def as_dict(self) -> dict:
        u = self.usage
        return {"user": self.user, "tree": self.tree, "limit": self.limit,
                "used": u.used if u else None, "reserved": u.reserved if u else None,
                "free": u.free if u and self.limit else None}


class QuotaView:
    """The limited trees of ``root`` with their figures, cached ``ttl`` seconds."""

    def __init__(self, root: str, ttl: float = 2.0) -> None:
        self.store = ConfigStore(root)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._trees: list[TreeView] = []
        self._ledgers: dict[str, FileLedger] = {}

    def trees(self) -> list[TreeView]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._trees = self._read()
                except Exception as err:  # a root that can't be listed now: the last view stands
                    log.warning("quota trees not read: %s: %s", type(err).__name__, err)
                self._at = time.monotonic()
            return self._trees

    def _read(self) -> list[TreeView]:
        found = []
        for info in trees(self.store):
            limit = self.store.size_limit(info.root)
            if limit == 0:
                continue
            ledger = self._ledgers.get(info.root)
            if ledger is None:
                ledger = self._ledgers[info.root] = FileLedger(info.root, self.store)
            try:
                usage = ledger.glance()
            except Exception as err:  # pragma: no cover - glance reports what it expects as None
                log.warning("%s: ledger not read: %s", info.root, err)
                usage = None
            path = info.label.partition(":")[2] or "/"
            found.append(TreeView(info.user, path, info.root, limit, usage))
        return found
