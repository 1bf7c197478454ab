"""Ledgers: where a quota tree's state lives, and how several trees move together.

Rules that live here:

- A tree is a folder with a size file; a file belongs to the nearest one
  at or above it, however it is reached (through which home or mount).
  A folder with a size file inside a tree is a tree of its own, left out
  of the enclosing one. Files with no tree above them share the server
  root's ledger, which keeps only their running uploads (so a crash is
  settled there too, and a second writer is refused there, whichever
  home or mount it comes through).
- Every tree has one ledger; it holds the state of ``quota.State``.
- The ``Ledger`` protocol is what the rest of xxftpd uses. Every operation
  is atomic against every other operation on the same tree, from any
  thread, process or host that shares the ledger; a backend provides that
  (``file.FileLedger``: ``flock`` + JSON in ``<tree>/.xxftp/ledger``, one
  host; a database backend: a transaction, several hosts).
- An owner is a process on a host. A backend settles what a dead owner
  left (its uploads and intents) before any operation sees the state;
  it never settles an owner it can't judge (another host, for a backend
  that only sees its own).
- A move between two trees locks both ledgers, always in the order of
  their roots, for the whole move.

- Owners are judged alive by the backend. A backend shared by several
  hosts can't see another host's processes: it holds one lock or lease
  per owner in the shared store (a PostgreSQL session advisory lock, say)
  and settles an owner whose lock is gone.
- ``commit`` and ``change`` run a filesystem action while the tree is
  locked, after a durable ``note`` or intent. A database backend keeps
  that shape with a per-tree lock that outlives transactions (a session
  advisory lock): one transaction writes the intent, the action runs,
  a second transaction applies it, then the lock goes.

What this package must not know: FTP, sessions, permissions or sockets.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Callable, Iterable, Protocol

from ..config import ConfigStore
from ..quota import Owner, Pending, Usage

HOST = socket.gethostname()


# --- who we are, and who is alive


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_SELF: dict = {"pid": 0, "owner": None}


def this_owner() -> Owner:
    """This process (found again after a fork)."""
    pid = os.getpid()
    if _SELF["pid"] != pid:
        _SELF.update(pid=pid, owner=Owner(HOST, pid, _start_time(pid)))
    return _SELF["owner"]


def alive_here(owner: Owner) -> bool:
    """Is ``owner`` running? Owners on other hosts are taken as alive."""
    if owner.host != HOST:
        return True
    me = this_owner()
    if owner.pid == me.pid:  # this very process (not an earlier one with its pid)?
        return owner.start == me.start
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.start is None or _start_time(owner.pid) in (None, owner.start)


def new_token() -> str:
    """A name for an upload, unique across processes and hosts."""
    return uuid.uuid4().hex


# --- the protocol


class Commit(Protocol):
    """What an upload may ask of its ledger while it commits (under the lock)."""

    def note(self, target: str, temp: str | None = None, old: int | None = None) -> None:
        """Record, durably and before acting, where the commit acts: the
        target, the named temporary it renames from, the size it replaces
        (what crash recovery needs)."""

    def fits(self, delta: int) -> None:
        """Raise QuotaExceeded unless ``delta`` more bytes fit (this upload's room left out)."""

    def busy(self, keys: Iterable[str]) -> None:
        """Raise Busy if another live upload holds any of ``keys``."""


class Ledger(Protocol):
    root: str  # the tree's real folder: its identity

    @property
    def limit(self) -> int | None:
        """The tree's limit: 0 unlimited, None an invalid size file."""

    def usage(self) -> Usage: ...

    def peek(self) -> Usage:
        """The usage as a report shows it: nothing written, created or settled."""

    def begin(self, token: str, entry: Pending, ahead: int) -> int:
        """Register an upload (Busy if a live upload holds one of its keys);
        returns the room granted ahead."""

    def reserve(self, token: str, needed: int, written: int, ahead: int) -> int:
        """Room for ``needed`` bytes in all (QuotaWait, QuotaExceeded); returns the grant."""

    def report(self, token: str, written: int, keep_ahead: bool) -> None:
        """Lease report: bytes written; ``keep_ahead`` False gives back the rest."""

    def commit(self, token: str, action: Callable[[Commit], int]) -> Usage:
        """End an upload: ``action`` makes its file what it should be and
        returns the bytes to charge; the upload's entry goes in the same step."""

    def abort(self, token: str) -> None:
        """End an upload that changed nothing."""

    def change(self, delta: int, gone: str, action: Callable[[], None], *, check_fits: bool = False,
               keys: Iterable[str] = (), renamed: tuple[str, str] | None = None,
               measure: Callable[[], tuple[int, Iterable[str]]] | None = None) -> None:
        """Make a change (delete, move) and charge ``delta`` once ``gone`` is gone.
        ``keys``: refuse (Busy) if a live upload holds any; ``renamed``: an
        (old, new) real path whose running uploads now live at the new one;
        ``measure``: gives (delta, keys) under the lock, in place of both."""

    def rescan(self, progress: Callable[[int], None] | None = None) -> int: ...

    def exists(self) -> bool: ...


# --- trees and moves


class Quotas:
    """Which ledger governs a folder: one per tree root, made once."""

    def __init__(self, store: ConfigStore, factory: Callable[[str, ConfigStore], Ledger] | None = None) -> None:
        self.store = store
        self._factory = factory
        self._ledgers: dict[str, Ledger] = {}

    def ledger(self, tree_root: str) -> Ledger:
        ledger = self._ledgers.get(tree_root)
        if ledger is None:
            if self._factory is None:
                from .file import FileLedger
                self._factory = FileLedger
            # one object per tree, even when two threads get here at once
            ledger = self._ledgers.setdefault(tree_root, self._factory(tree_root, self.store))
        return ledger

    def tree_of(self, folder: str) -> Ledger:
        """The ledger governing ``folder`` (a real path): that of the nearest
        folder at or above it with a size file. Where there is none, the
        server root's, which then only keeps running uploads: one ledger
        for every folder without a quota, so a second writer is refused
        there whichever home or mount it comes through."""
        path = folder.rstrip("/") or "/"
        while True:
            if self.store.has_size(path):
                return self.ledger(path)
            if path == "/":
                return self.ledger(self.store.server_root)
            path = os.path.dirname(path)

    def limited(self, tree_root: str) -> Ledger | None:
        """The ledger of a tree if its usage is tracked (a limit, or an invalid size file)."""
        ledger = self.ledger(tree_root)
        return ledger if ledger.limit != 0 else None


Measure = Callable[[], "tuple[int, list[str]]"]  # (size, keys) of what a change touches, now


def move(src: Ledger, dst: Ledger, moved: Measure, replaced: Measure, gone: str, action: Callable[[], None],
         renamed: tuple[str, str] | None = None) -> None:
    """Move what ``moved`` measures from tree ``src`` to tree ``dst`` by ``action``.

    ``replaced`` measures what the move overwrites at the destination.
    Both are measured under the ledgers' locks, as the move finds things.
    Within one tree only the replaced file is freed, and running uploads
    follow ``renamed``. Across trees, nothing moved may be held by a
    running upload and ``dst`` must have room; both ledgers are locked, in
    the order of their roots, for the whole move.
    """
    if src.root == dst.root:
        def freed() -> tuple[int, list[str]]:
            size, keys = replaced()
            return -size, keys

        src.change(0, gone, action, renamed=renamed, measure=freed)
        return
    once: list[tuple[int, list[str]]] = []

    def moving() -> tuple[int, list[str]]:  # measured once, under the first lock taken
        if not once:
            once.append(moved())
        return once[0]

    def leaving() -> tuple[int, list[str]]:
        size, keys = moving()
        return -size, keys

    def arriving() -> tuple[int, list[str]]:
        size, _ = moving()
        old, keys = replaced()
        return size - old, keys

    steps = sorted([(src, leaving, False), (dst, arriving, True)], key=lambda step: step[0].root)
    run = action
    for ledger, measure, check in reversed(steps):
        run = (lambda ledger, measure, check, inner:
               lambda: ledger.change(0, gone, inner, check_fits=check, measure=measure))(ledger, measure, check, run)
    run()


_registry: dict[str, Quotas] = {}
_registry_lock = threading.Lock()


def shared_quotas(store: ConfigStore) -> Quotas:
    """The process-wide Quotas of a store's server root."""
    quotas = _registry.get(store.server_root)  # every login comes here: no lock when it is there
    if quotas is not None and quotas.store is store:
        return quotas
    with _registry_lock:
        quotas = _registry.get(store.server_root)
        if quotas is None or quotas.store is not store:
            quotas = _registry[store.server_root] = Quotas(store)
        return quotas


__all__ = ["HOST", "this_owner", "alive_here", "new_token", "Commit", "Ledger", "Quotas", "move", "shared_quotas"]
