"""Quota trees and their ledger: usage that holds across threads, processes
and crashes.

Rules that live here:

- A quota tree is a home or a mount target whose ``.xxftp/size`` holds a
  limit (0 or no file: unlimited; invalid: uploads refused).
- Its usage is the total size of its regular files, ``.xxftp/`` excluded,
  upload temporaries excluded, and the trees of mounts declared inside it
  excluded (they count on their own); symlinks are not followed.
- The ledger ``<tree>/.xxftp/ledger`` (JSON) holds the committed usage and
  the *pending* reservations of running uploads. Every read-modify-write
  happens under an exclusive ``flock`` on ``.xxftp/ledger.lock``, so
  uploads in any thread or process never together pass the limit.
- A change to the tree (replace, delete, move) is written as an *intent*
  ("apply DELTA once PATH is gone") before it is made and folded into the
  usage after. An intent or reservation left by a dead process (pid and
  start time no longer running) is settled by the next process that opens
  the ledger: its temporaries are removed or kept as the upload mode said,
  and the usage matches what is on the disk.
- When parallel uploads together need more room than is left, an upload
  that can't get room waits (``QuotaWait``) while another upload holding
  room can still move (its end frees room). When every upload holding
  room is stuck, the youngest of them gives way: it is refused (552) and
  releases what it held. So uploads fail only when they must, the oldest
  last, in any thread or process. A lone upload past the limit fails at
  once.
- The ledger is built by one scan when a limited tree is first needed (or
  when the file is missing or unreadable); after that each upload costs a
  few ledger updates, whatever the number of files in the tree.
- A tree without a limit keeps only the journal of running uploads (so a
  crash is cleaned up there too) and no usage: its usage is unknown until
  a limit is set, which starts from a fresh scan.
- Changes made outside FTP are not seen until ``xxftpd quota --rescan``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat as stat_mod
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .config import CONFIG_DIR, ConfigStore

log = logging.getLogger("xxftpd.quota")

TEMP_PREFIX = ".xxftpd-"
TEMP_SUFFIX = ".part"
GRANT = 8 * 1024 * 1024  # bytes reserved ahead, so the ledger is touched rarely
_UNREAD = object()  # a limit not read yet
_READ = 65536  # ledger bytes per read (one read for any real ledger)


class QuotaExceeded(Exception):
    """An upload or move would pass the tree's limit (FTP 552)."""


class QuotaWait(QuotaExceeded):
    """No room now, but younger uploads hold some: try again shortly."""


class QuotaInvalid(QuotaExceeded):
    """The tree's size file is unreadable or malformed: uploads refused."""


def human(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


# --- process identity, so a reservation of a dead process can be told apart


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    if pid == os.getpid():  # this very process (not an earlier one with its pid)?
        return start == _me()["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _start_time(pid) in (None, start)


_SELF = {"pid": 0, "start": None}


def _me() -> dict:
    pid = os.getpid()
    if _SELF["pid"] != pid:  # after a fork
        _SELF.update(pid=pid, start=_start_time(pid))
    return {"pid": pid, "start": _SELF["start"]}


_counter = iter(range(1, 1 << 62))
_counter_lock = threading.Lock()


def new_token() -> str:
    with _counter_lock:
        n = next(_counter)
    return f"{os.getpid()}.{n}"


# --- the scan


def scan(root: str, store: ConfigStore, progress: Callable[[int], None] | None = None) -> int:
    """Total size of the tree's files, by the rules above."""
    root = os.path.realpath(root)
    excluded: set[str] = set()
    sizes: dict[str, int] = {}
    stack = [root]
    seen = 0
    while stack:
        folder = stack.pop()
        mounts = store.mounts(folder)
        for mount in mounts.values():
            excluded.add(os.path.realpath(mount.target))
        total = 0
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    if name == CONFIG_DIR or is_temp_name(name) or name in mounts:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat_mod.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    elif stat_mod.S_ISREG(st.st_mode):
                        total += st.st_size
                    seen += 1
                    if progress is not None and seen % 1000 == 0:
                        progress(seen)
        except OSError as err:
            log.warning("%s: cannot scan: %s", folder, err.strerror)
        sizes[folder] = total
    excluded.discard(root)
    return sum(size for folder, size in sizes.items()
               if not any(folder == ex or folder.startswith(ex + "/") for ex in excluded))


# --- the ledger


@dataclass(frozen=True)
class Usage:
    limit: int | None  # None: invalid size file
    used: int
    reserved: int

    @property
    def free(self) -> int:
        if self.limit is None:
            return 0
        return max(0, self.limit - self.used - self.reserved)


class Ledger:
    """The usage ledger of one quota tree."""

    def __init__(self, root: str, store: ConfigStore) -> None:
        self.root = os.path.realpath(root)
        self.store = store
        self.dir = os.path.join(self.root, CONFIG_DIR)
        self.path = os.path.join(self.dir, "ledger")
        # The last state this process read or wrote, with its exact text:
        # when the file still holds that text, it needs no parsing.
        self._last: tuple[str, dict] | None = None

    @property
    def limit(self) -> int | None:
        return self.store.size_limit(self.root)

    @property
    def limited(self) -> bool:
        """True if usage is tracked (a limit, or an invalid size file)."""
        return self.limit != 0

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    @contextmanager
    def _locked(self, limit: int | None | object = _UNREAD) -> Iterator[tuple[dict, Callable[[], None]]]:
        """The state under an exclusive lock on the ledger file itself.

        Yields ``(state, save)``; whatever changed is written back in place
        when the block ends (``save`` writes at once, for intents). A torn
        write (a crash in the middle of one) reads back as unparsable and
        is rebuilt by a scan. ``limit``: the tree's limit if the caller has
        just read it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # no .xxftp folder yet
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state, text, size = self._load(fd, self.limit if limit is _UNREAD else limit)
            self._last = None  # until this operation's state is on disk
            written = [text, size]

            def save() -> None:
                new = json.dumps(state, sort_keys=True)
                if new != written[0]:
                    data = new.encode()
                    os.pwrite(fd, data, 0)
                    if len(data) < written[1]:  # a longer text overwrote all of the old one
                        os.ftruncate(fd, len(data))
                    written[0], written[1] = new, len(data)

            try:
                yield state, save
            finally:
                save()
                self._last = (written[0], state)
        finally:
            os.close(fd)  # releases the lock

    def _load(self, fd: int, limit: int | None) -> tuple[dict, str, int]:
        """(state, its text, the file's size in bytes)."""
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(fd, _READ, offset)
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) < _READ:  # a short read of a regular file: its end
                break
        text = b"".join(chunks).decode("utf-8", "replace")
        last = self._last
        if last is not None and last[0] == text and text:
            state = last[1]
        else:
            state = self._parse(text)
            if state is None:
                text = ""
                state = {"used": None, "pending": {}, "intents": []}
        self._settle(state)
        limited = limit != 0
        if limited and state["used"] is None:
            state["used"] = scan(self.root, self.store)
            log.info("%s: usage scanned: %s", self.root, human(state["used"]))
        elif not limited and state["used"] is not None:
            state["used"] = None  # not tracked from now on
        return state, text, offset

    def _parse(self, text: str) -> dict | None:
        """The state a ledger text holds; None if it is unreadable."""
        state = {"used": None, "pending": {}, "intents": []}
        if text:
            try:
                loaded = json.loads(text)
                if not isinstance(loaded.get("used"), (int, type(None))):
                    raise ValueError("bad usage")
                state.update(loaded)
            except (ValueError, AttributeError) as err:
                log.warning("%s: unreadable ledger (%s); rebuilding it", self.path, err)
                return None
        return state

    def _settle(self, state: dict) -> None:
        """Fold in what dead processes left behind."""
        for intent in list(state["intents"]):
            if _alive(intent["pid"], intent["start"]):
                continue
            state["intents"].remove(intent)
            if not os.path.lexists(intent["gone"]):
                _add(state, intent["delta"])
        for token, p in list(state["pending"].items()):
            if _alive(p["pid"], p["start"]):
                continue
            del state["pending"][token]
            _add(state, _recover(p))

    # --- the operations

    def usage(self) -> Usage:
        limit = self.limit
        with self._locked(limit) as (state, _):
            return _usage(limit, state)

    def journal(self, token: str, entry: dict) -> None:
        """Register an upload (no room needed: an unlimited tree)."""
        with self._locked() as (state, _):
            state["pending"][token] = {**_me(), **entry, "bytes": 0, "since": time.time()}

    def reserve(self, token: str, needed: int, ahead: int = GRANT, entry: dict | None = None) -> int:
        """Raise the upload's reservation to at least ``needed`` bytes.

        ``entry`` registers the upload on its first reservation (what crash
        recovery needs). Returns the new reservation, granted up to
        ``ahead`` bytes beyond ``needed`` (at most a sixteenth of the room
        left), or raises QuotaWait / QuotaExceeded by the rules above.
        """
        limit = self.limit
        if limit is None:
            raise QuotaInvalid("quota file is invalid")
        with self._locked(limit) as (state, _):
            mine = state["pending"].get(token)
            if mine is None:
                mine = state["pending"][token] = {**_me(), **(entry or {}), "bytes": 0, "since": time.time()}
            others = sum(p["bytes"] for t, p in state["pending"].items() if t != token)
            free = limit - state["used"] - others
            if needed > free:
                mine["waiting"] = True
                holders = [(p.get("since", 0), t, p.get("waiting", False))
                           for t, p in state["pending"].items() if t != token and p["bytes"]]
                someone_moves = any(not waiting for _, _, waiting in holders)
                youngest = max([(since, t) for since, t, _ in holders] + [(mine.get("since", 0), token)])
                if holders and (someone_moves or youngest[1] != token):
                    raise QuotaWait(f"quota: waiting for room held by other uploads (limit {limit} bytes)")
                raise QuotaExceeded(f"quota exceeded: limit {limit} bytes ({human(limit)})")
            mine.pop("waiting", None)
            grant = needed + min(ahead, (free - needed) // 16)
            mine["bytes"] = grant
            return grant

    def finish(self, token: str, delta: int, action: Callable[[], None] | None = None) -> Usage:
        """End an upload: run ``action`` (a replace; may raise) and charge ``delta``.

        The upload's own journal entry (which records the temporary's
        inode) is what makes this crash-exact: it is removed in the same
        write that charges the delta.
        """
        limit = self.limit
        with self._locked(limit) as (state, _):
            state["pending"].pop(token, None)
            if action is not None:
                action()
            _add(state, delta)
            return _usage(limit, state)

    def change(self, delta: int, gone: str, action: Callable[[], None], check_fits: bool = False) -> None:
        """Make a change to the tree (delete, move) and charge ``delta``.

        An intent ("apply delta once ``gone`` is gone") is written before
        the change, so a crash in between is settled exactly.
        """
        with self._locked() as (state, save):
            if check_fits and delta > 0:
                limit = self.limit
                if limit is None:
                    raise QuotaInvalid("quota file is invalid")
                if delta > _usage(limit, state).free:
                    raise QuotaExceeded(f"quota exceeded: limit {limit} bytes ({human(limit)})")
            intent = dict(_me(), delta=delta, gone=gone)
            state["intents"].append(intent)
            save()
            try:
                action()
            finally:
                state["intents"].remove(intent)
            if not os.path.lexists(gone):
                _add(state, delta)

    def rescan(self, progress: Callable[[int], None] | None = None) -> int:
        """Rebuild the usage from the disk, keeping live reservations."""
        with self._locked() as (state, _):
            state["used"] = scan(self.root, self.store, progress)
            return state["used"]


def _usage(limit: int | None, state: dict) -> Usage:
    return Usage(limit, state["used"] or 0, sum(p["bytes"] for p in state["pending"].values()))


def _add(state: dict, delta: int) -> None:
    if state["used"] is not None:
        state["used"] = max(0, state["used"] + delta)


def _replaced(p: dict) -> int:
    """The growth of a replace that happened before its charge was written."""
    try:
        st = os.lstat(p["target"])
    except OSError:
        return 0
    return st.st_size - p["old"] if p.get("ino") == st.st_ino else 0


def _recover(p: dict) -> int:
    """Settle a dead upload; returns the usage it adds."""
    target, temp, old = p["target"], p.get("temp"), p["old"]
    try:
        if p["crash"] == "delete":
            if temp and os.path.lexists(temp):
                os.remove(temp)
                return 0
            return _replaced(p)
        if p["crash"] == "truncate":
            if os.path.getsize(target) > old:
                os.truncate(target, old)
            return 0
        if p["crash"] == "keep-new":  # a new file's partial upload, kept for resuming
            if temp and not os.path.lexists(temp):
                return _replaced(p)
            if temp and os.path.lexists(temp):
                if os.path.lexists(target):
                    os.remove(temp)
                    return 0
                os.replace(temp, target)
            return os.path.getsize(target) if os.path.lexists(target) else 0
        if p["crash"] == "keep":  # written in place
            return (os.path.getsize(target) if os.path.lexists(target) else 0) - old
    except OSError as err:
        log.warning("recovering upload of %s: %s", target, err.strerror)
    return 0


def move(src: Ledger | None, dst: Ledger | None, moved: int, replaced: int,
         gone: str, action: Callable[[], None]) -> None:
    """Move ``moved`` bytes from tree ``src`` to tree ``dst`` by ``action``.

    ``replaced`` is the size of what the move overwrites at the
    destination. ``dst`` must have room (QuotaExceeded otherwise). Both
    ledgers are locked, always in path order, for the whole move.
    """
    if src is not None and dst is not None and src.root == dst.root:
        if replaced:
            src.change(-replaced, gone, action)
        else:
            action()
        return
    steps: list[tuple[Ledger, int, bool]] = []
    if src is not None:
        steps.append((src, -moved, False))
    if dst is not None:
        steps.append((dst, moved - replaced, True))
    steps.sort(key=lambda step: step[0].root)
    run = action
    for ledger, delta, check in reversed(steps):
        run = (lambda ledger, delta, check, inner: lambda: ledger.change(delta, gone, inner, check))(
            ledger, delta, check, run)
    run()


class Quotas:
    """Which ledger governs a folder: one per tree root with a limit."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._ledgers: dict[str, Ledger] = {}

    def ledger(self, tree_root: str) -> Ledger:
        """The ledger of a tree (tracking usage only if the tree is limited)."""
        ledger = self._ledgers.get(tree_root)
        if ledger is None:
            ledger = self._ledgers[tree_root] = Ledger(tree_root, self.store)
        return ledger

    def limited(self, tree_root: str) -> Ledger | None:
        """The ledger of a tree if its usage is tracked, else None."""
        ledger = self.ledger(tree_root)
        return ledger if ledger.limited else None


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
