"""The quota core: what a tree may hold, who holds room in it, and what to say.

Rules that live here:

- A quota tree is a folder whose ``.xxftp/size`` holds a limit (0:
  unlimited; invalid: uploads refused): a home, a mount target, or any
  folder an admin gives a size file. Its usage is the total size of its
  regular files, ``.xxftp/`` and upload temporaries excluded, and folders
  inside it that are trees of their own excluded. A file counts in the
  nearest tree at or above it, whichever home or mount reaches it.
- A tree's *state* is its committed usage (``used``; ``None`` while
  unknown or untracked), the *pending* uploads (each with the room it
  reserved, what it has written, its owner and the keys of the files it
  writes) and the *intents* of changes under way (delete, move: "apply
  DELTA once PATH is gone").
- Room: an upload reserves room before it writes. A reservation is
  granted ahead of need, by what the caller asks (``GRANT``, or what the
  upload has written so far if more) but at most a sixteenth of what is
  left, so a big upload touches its ledger rarely. The free room is the limit
  minus the usage minus every pending reservation. Exactly ``limit``
  bytes fit; one more does not.
- Leases: an upload that has received nothing for ``LEASE`` seconds gives
  back what it reserved beyond what it wrote (``report``), so idle uploads
  hold no more than their own bytes. Only the upload's owner knows how
  much it wrote, so the owner gives the room back; nobody expires another
  owner's room by the clock (an upload writing slowly inside its grant
  would then write bytes nobody counts). An upload waiting for room (see
  below) is not idle.
- At the wall: an upload that can't get room waits while another upload
  holding room can still move (its end frees room). When every upload
  holding room is stuck, the youngest of them gives way (552) and
  releases what it held. So uploads fail only when they must, the oldest
  last, in any thread, process or host.
- One writer per file: an upload names the files it writes or replaces
  (``file:`` its inode), the name it will commit to (``name:`` the folder's
  inode and the name) and the folder it commits into (``folder:`` its
  inode). A second upload sharing a file or name key is refused (450);
  deleting, replacing or moving to another tree a file with a live
  ``file:`` key, or removing or moving a folder with a live ``folder:`` key,
  is refused the same way.
- A ledger's text is exactly what ``dump`` writes. Anything else (torn,
  hand-edited, missing fields, wrong types) is *unreadable*: the caller
  logs it once and rebuilds the usage by a scan; it is never trusted in
  part. So is a ledger naming an upload's file outside its own tree: a
  target must be a normalised absolute path below the tree's root with no
  dot-name component, a temporary the same but for its own name, which
  must be named like a temporary (settling acts on these paths, so a
  forged ledger must not point it anywhere else).
- Every quota figure a person reads (SITE QUOTA, the 226, ``xxftpd quota``
  and ``users``, the 552) is formatted here; ``used`` counts committed
  bytes, ``reserved`` the room of running uploads, and ``free`` leaves
  both out.

What this module must not know: files, locks, clocks, processes or
sockets. Time and liveness are passed in; the ledger backends
(``ledger/``) do the I/O and call these functions under their lock.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

GRANT = 8 * 1024 * 1024  # bytes reserved ahead at most, so the ledger is touched rarely
LEASE = 2.0  # seconds without bytes after which an upload gives back its room ahead
TEMP_PREFIX = ".xxftpd-"
TEMP_SUFFIX = ".part"
CRASH_POLICIES = ("delete", "truncate", "keep", "keep-new")  # keep-new: entries of earlier versions only


# --- signals: data, not sentences


class QuotaExceeded(Exception):
    """An upload or move would pass a tree's limit (FTP 552)."""

    def __init__(self, limit: int | None, free: int = 0, top: str | None = None, held: bool = False) -> None:
        super().__init__(limit, free, top, held)
        self.limit, self.free, self.top, self.held = limit, free, top, held

    def at(self, top: str) -> QuotaExceeded:
        """The same refusal, naming the tree's FTP path."""
        return type(self)(self.limit, self.free, top, self.held)

    def __str__(self) -> str:
        return exceeded_text(self)


class QuotaWait(QuotaExceeded):
    """No room now, but other uploads hold some and can still move: retry shortly."""


class QuotaInvalid(QuotaExceeded):
    """The tree's size file is unreadable or malformed: uploads refused."""

    def __init__(self, limit: None = None, free: int = 0, top: str | None = None, held: bool = False) -> None:
        super().__init__(None, 0, top, False)


class Busy(Exception):
    """Another upload is writing this file (or into this folder): FTP 450."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "file" or "folder"

    def __str__(self) -> str:
        if self.kind == "folder":
            return "an upload is being written into this folder; try again when it ends"
        return "another upload is writing this file; try again when it ends"


# --- the messages


def human(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def exceeded_text(err: QuotaExceeded) -> str:
    where = f"{err.top}: " if err.top else ""
    if isinstance(err, QuotaInvalid) or err.limit is None:
        return f"{where}uploads refused: the quota file is invalid"
    if isinstance(err, QuotaWait):
        return f"{where}quota: waiting for room held by other uploads (limit {err.limit} bytes)"
    if err.held:
        return f"{where}quota: room still held by other uploads (limit {err.limit} bytes)"
    return f"{where}quota exceeded: limit {err.limit} bytes ({human(err.limit)}), {human(err.free)} free"


@dataclass(frozen=True)
class Usage:
    """A tree's figures. ``limit`` None: an invalid size file; 0: unlimited."""

    limit: int | None
    used: int
    reserved: int

    @property
    def free(self) -> int:
        if not self.limit:
            return 0
        return max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True)
class Figures:
    """A tree's figures as a person reads them, the same in every view."""

    limit: str  # "10.0 MiB", "unlimited" or "INVALID"
    used: str  # committed bytes
    held: str  # room held by running uploads
    free: str
    percent: str  # of the limit taken, held room included ("-" without a limit)


def figures(usage: Usage | None) -> Figures:
    """The figures of ``usage`` (None: an unlimited tree, usage not tracked)."""
    if usage is None or usage.limit == 0:
        return Figures("unlimited", "-", "-", "-", "-")
    if usage.limit is None:
        return Figures("INVALID", human(usage.used), human(usage.reserved), "-", "-")
    percent = f"{100 * (usage.used + usage.reserved) / usage.limit:.0f}%"
    return Figures(human(usage.limit), human(usage.used), human(usage.reserved), human(usage.free), percent)


def _free(usage: Usage) -> str:
    """The room left, in exact bytes when rounding would show it equal to
    the limit (100 bytes taken of 10 MiB is not '10.0 MiB free of 10.0 MiB')."""
    limit = usage.limit or 0
    text = human(usage.free)
    if usage.free != limit and text == human(limit):
        return f"{usage.free} bytes"
    return text


def usage_text(usage: Usage) -> str:
    """'4.0 KiB used of 10.0 KiB (40%), 6.0 KiB free' (and the room held, if any)."""
    if usage.limit is None:
        return "the quota file is invalid; uploads are refused"
    if not usage.limit:
        return "no quota"
    f = figures(usage)
    held = f", {f.held} held by running uploads" if usage.reserved else ""
    return f"{f.used} used of {f.limit} ({f.percent}){held}, {_free(usage)} free"


def free_text(usage: Usage) -> str:
    """The note of a 226: '6.0 KiB free of 10.0 KiB quota'."""
    return f"{_free(usage)} free of {human(usage.limit or 0)} quota"


# --- identity of what a pending upload writes


def file_key(dev: int, ino: int) -> str:
    return f"file:{dev}:{ino}"


def name_key(dev: int, folder_ino: int, name: str) -> str:
    return f"name:{dev}:{folder_ino}/{name}"


def folder_key(dev: int, ino: int) -> str:
    return f"folder:{dev}:{ino}"


def temp_name(token: str) -> str:
    """A named temporary of an upload: hidden, and short whatever the target's name."""
    return f"{TEMP_PREFIX}{token}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def in_tree(path: str, tree: str, temp: bool = False) -> bool:
    """True if ``path`` is a file an upload of the tree ``tree`` may write:
    normalised, below ``tree``, no dot-name component (a temporary's own
    name excepted, which must be named like one)."""
    prefix = tree.rstrip("/") + "/"
    if not path.startswith(prefix) or os.path.normpath(path) != path or "\0" in path:
        return False
    parts = path[len(prefix):].split("/")
    if temp and not is_temp_name(parts.pop()):  # earlier versions put the target's name in it
        return False
    return (temp or bool(parts)) and all(part and not part.startswith(".") for part in parts)


# --- the state


@dataclass(frozen=True)
class Owner:
    """Who runs an upload or change: a process on a host (its start time
    tells a live process from an earlier one with the same pid)."""

    host: str
    pid: int
    start: int | None


@dataclass
class Pending:
    """A running upload as its ledger knows it."""

    owner: Owner
    crash: str  # what settling does if the owner dies: see CRASH_POLICIES
    target: str  # the real path it commits to (as of its last report)
    old: int  # the committed size it replaces or extends (0 for a new file)
    ino: int  # the inode it writes (to tell a finished commit after a crash)
    temp: str | None = None  # a named temporary, while one exists
    keys: tuple[str, ...] = ()
    bytes: int = 0  # room reserved, its written bytes included
    written: int = 0  # bytes written as of its last report
    since: float = 0.0  # when it started (age decides who gives way)
    touched: float = 0.0  # its last reservation or report
    waiting: bool = False  # it asked for room and got QuotaWait


@dataclass(frozen=True)
class Intent:
    """A change under way: once ``gone`` no longer exists, apply ``delta``."""

    owner: Owner
    delta: int
    gone: str


@dataclass
class State:
    used: int | None = None
    pending: dict[str, Pending] = field(default_factory=dict)
    intents: list[Intent] = field(default_factory=list)

    def usage(self, limit: int | None) -> Usage:
        return Usage(limit, self.used or 0, sum(p.bytes for p in self.pending.values()))

    def add(self, delta: int) -> None:
        """Charge (or free) committed bytes; untracked usage stays untracked."""
        if self.used is not None:
            self.used = max(0, self.used + delta)


# --- the text of a ledger: exactly what dump writes, or unreadable


class Unreadable(ValueError):
    """A ledger text that is not one ``dump`` wrote; the message says what is off."""


def dump(state: State) -> str:
    return json.dumps({
        "used": state.used,
        "pending": {token: _pending_dict(p) for token, p in state.pending.items()},
        "intents": [{**_owner_dict(i.owner), "delta": i.delta, "gone": i.gone} for i in state.intents],
    }, sort_keys=True)


def _owner_dict(owner: Owner) -> dict:
    return {"host": owner.host, "pid": owner.pid, "start": owner.start}


def _pending_dict(p: Pending) -> dict:
    return {**_owner_dict(p.owner), "crash": p.crash, "target": p.target, "old": p.old, "ino": p.ino,
            "temp": p.temp, "keys": list(p.keys), "bytes": p.bytes, "written": p.written,
            "since": p.since, "touched": p.touched, "waiting": p.waiting}


def load(text: str, this_host: str, tree: str | None = None) -> State:
    """The state a ledger text holds; an empty text is a new ledger.

    Raises Unreadable for anything ``dump`` would not have written, and,
    given the ``tree`` the ledger belongs to, for an upload whose target
    or temporary is not ``in_tree``.
    Entries written before hosts were recorded belong to ``this_host``.
    """
    if not text:
        return State()
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise Unreadable(f"not JSON ({err})") from None
    _expect(isinstance(raw, dict), "not an object")
    used = raw.get("used")
    _expect(used is None or _is_int(used) and used >= 0, "bad 'used'")
    pending, intents = raw.get("pending", {}), raw.get("intents", [])
    _expect(isinstance(pending, dict) and isinstance(intents, list), "bad 'pending' or 'intents'")
    state = State(used)
    for token, entry in pending.items():
        _expect(isinstance(entry, dict), f"pending {token!r} is not an object")
        state.pending[token] = p = _load_pending(entry, this_host, token)
        if tree is not None:
            _expect(in_tree(p.target, tree) and (p.temp is None or in_tree(p.temp, tree, temp=True)),
                    f"pending {token!r}: a path outside the tree")
    for entry in intents:
        _expect(isinstance(entry, dict), "an intent is not an object")
        _expect(_is_int(entry.get("delta")) and isinstance(entry.get("gone"), str), "bad intent")
        state.intents.append(Intent(_load_owner(entry, this_host), entry["delta"], entry["gone"]))
    return state


def _load_owner(entry: dict, this_host: str) -> Owner:
    host, pid, start = entry.get("host", this_host), entry.get("pid"), entry.get("start")
    _expect(isinstance(host, str) and _is_int(pid) and (start is None or _is_int(start)), "bad owner")
    return Owner(host, pid, start)


def _load_pending(e: dict, this_host: str, token: str) -> Pending:
    def number(name: str, default=None, kind=(int,)):
        value = e.get(name, default)
        _expect(isinstance(value, kind) and not isinstance(value, bool) and value >= 0,
                f"pending {token!r}: bad {name!r}")
        return value

    crash, target, temp, keys = e.get("crash"), e.get("target"), e.get("temp"), e.get("keys", [])
    _expect(crash in CRASH_POLICIES and isinstance(target, str) and (temp is None or isinstance(temp, str)),
            f"pending {token!r}: bad crash, target or temp")
    _expect(isinstance(keys, list) and all(isinstance(k, str) for k in keys), f"pending {token!r}: bad keys")
    _expect(isinstance(e.get("waiting", False), bool), f"pending {token!r}: bad 'waiting'")
    return Pending(_load_owner(e, this_host), crash, target, number("old"), number("ino"), temp, tuple(keys),
                   number("bytes", 0), number("written", 0), number("since", 0.0, (int, float)),
                   number("touched", 0.0, (int, float)), e.get("waiting", False))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unreadable(what)


# --- the decisions (called under the ledger's lock)


def begin(state: State, limit: int | None, token: str, entry: Pending, ahead: int) -> int:
    """Register an upload and grant it room ahead, up to ``ahead`` bytes (at
    most a sixteenth of the room left). Never refuses: an upload that
    writes nothing needs no room. Returns the grant."""
    state.pending[token] = entry
    if not limit:
        return ahead
    free = limit - (state.used or 0) - sum(p.bytes for t, p in state.pending.items() if t != token)
    entry.bytes = max(0, min(ahead, free // 16))
    return entry.bytes


def reserve(state: State, limit: int | None, token: str, needed: int, written: int, ahead: int, now: float) -> int:
    """Raise ``token``'s reservation to at least ``needed`` bytes.

    ``written``: what the upload has written so far (its lease report).
    Returns the new reservation, granted up to ``ahead`` bytes beyond
    ``needed`` (at most a sixteenth of the room left); raises QuotaWait or
    QuotaExceeded by the rules above.
    """
    if limit is None:
        raise QuotaInvalid()
    mine = state.pending[token]
    mine.written, mine.touched = written, now
    if not limit:  # unlimited: nothing to hold
        mine.bytes = 0
        return needed + ahead
    others = [(t, p) for t, p in state.pending.items() if t != token]
    free = limit - (state.used or 0) - sum(p.bytes for _, p in others)
    if needed > free:
        mine.waiting = True
        holders = [(p.since, t, p.waiting) for t, p in others if p.bytes]
        someone_moves = any(not waiting for _, _, waiting in holders)
        youngest = max([(since, t) for since, t, _ in holders] + [(mine.since, token)])
        if holders and (someone_moves or youngest[1] != token):
            raise QuotaWait(limit, max(0, free))
        raise QuotaExceeded(limit, max(0, free))
    mine.waiting = False
    mine.bytes = needed + min(ahead, (free - needed) // 16)
    return mine.bytes


def report(state: State, token: str, written: int, keep_ahead: bool, now: float) -> None:
    """An upload's lease report: what it wrote; ``keep_ahead`` False gives
    back the room beyond that."""
    mine = state.pending.get(token)
    if mine is None:
        return
    mine.written, mine.touched = written, now
    if not keep_ahead:
        mine.bytes = min(mine.bytes, written)


def fits(state: State, limit: int | None, delta: int, exclude: str | None = None) -> None:
    """Raise QuotaExceeded unless ``delta`` more committed bytes fit.

    ``exclude``: the upload that is committing them; what fits in its own
    reservation always fits (a limit lowered meanwhile applies to its
    next reservation, not to its commit).
    """
    mine = state.pending.get(exclude) if exclude is not None else None
    if delta <= 0 or limit == 0 or (mine is not None and delta <= mine.bytes):
        return
    if limit is None:
        raise QuotaInvalid()
    held = sum(p.bytes for t, p in state.pending.items() if t != exclude)
    free = limit - (state.used or 0) - held
    if delta > free:
        raise QuotaExceeded(limit, max(0, free))


def writer_keys(keys: Iterable[str]) -> list[str]:
    """The keys on which two uploads exclude each other (a shared folder does not)."""
    return [key for key in keys if not key.startswith("folder:")]


def busy(state: State, keys: Iterable[str], live: Callable[[Owner], bool], exclude: str | None = None) -> Busy | None:
    """A Busy refusal if a live pending upload holds any of ``keys``."""
    wanted = set(keys)
    for token, p in state.pending.items():
        if token != exclude and wanted.intersection(p.keys) and live(p.owner):
            hit = wanted.intersection(p.keys)
            return Busy("folder" if all(k.startswith("folder:") for k in hit) else "file")
    return None


__all__ = [
    "GRANT", "LEASE", "TEMP_PREFIX", "TEMP_SUFFIX", "QuotaExceeded", "QuotaWait", "QuotaInvalid", "Busy",
    "human", "exceeded_text", "Usage", "Figures", "figures", "usage_text", "free_text", "file_key", "name_key", "folder_key",
    "temp_name", "is_temp_name", "in_tree", "Owner", "Pending", "Intent", "State", "Unreadable", "dump", "load",
    "begin", "reserve", "report", "fits", "writer_keys", "busy",
]
