"""The limits board: users' rate clocks and sessions, seen by every process.

Rules that live here:

- One board per server, made before any worker or session process is
  forked (``--workers``, ``multi-proc``): an anonymous shared memory file
  (``memfd``) that every process of the server maps. Nothing on disk,
  nothing left behind when the server ends.
- Every read-and-change holds the board's lock: a POSIX record lock on
  that file, which the kernel drops when its process dies (even killed in
  the middle), and a thread lock, since record locks do not exclude the
  threads of one process.
- Rate clocks: ``users`` records (user key, download clock, upload clock)
  in an open-addressed table. A record whose clocks have both run out
  holds nothing and may be taken by another user; keys are never cleared,
  so a search stops at the first record never used. Beyond ``users``
  users transferring with a rate at the same moment, users share records.
- Sessions: ``sessions`` places (user key, address key, pid, process start
  time). A place whose process has ended (a crashed worker, a killed
  session process) is dead: freed when the user's sessions are next
  counted (only a user with a session limit is counted, so only then). A
  process is its pid and its start time, so a recycled pid
  does not keep a dead place alive. Beyond ``sessions`` logged-in sessions
  a login is let in uncounted (logged once).
- Names and addresses are kept as 64-bit keyed hashes (blake2b, keyed by
  the board's own random secret): fixed-size records, and no address can
  be chosen to collide with another.

What this module must not know: sockets, pyftpdlib, FTP replies. The
arithmetic of the clocks and the decision to refuse a session are
``userlimits``'.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .userlimits import UserLimits, charge, session_refusal

__all__ = ["Board", "UNCOUNTED"]

log = logging.getLogger("xxftpd.limits")

UNCOUNTED = -1  # the place of a session let in while every place was taken

_HEADER = 64  # starts with the count of places used so far
_RECORD = struct.Struct("=Qdd")  # user key, download clock, upload clock
_RECORD_SIZE = 32
_CLOCK = struct.Struct("=d")
_KEY = struct.Struct("=Q")
_INFO = struct.Struct("=QQQ")  # address key, pid, process start time
_EMPTY = bytes(_KEY.size)


def _shared_file(size: int) -> io.FileIO:
    """An unnamed file of ``size`` bytes (closed with the board)."""
    try:
        file = io.FileIO(os.memfd_create("xxftpd-limits", os.MFD_CLOEXEC), "r+")
    except (AttributeError, OSError):  # not Linux: an unnamed temporary file does the same
        file = tempfile.TemporaryFile(buffering=0)
    file.truncate(size)
    return file


def _start_of(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if it
    has ended; 0 where ``/proc`` can't tell (then the pid alone counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        text = b""
    fields = text.rsplit(b")", 1)[-1].split()
    if len(fields) > 19:
        return int(fields[19])  # field 22 of proc(5); fields here start at the 3rd
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return 0


_me: tuple[int, int] = (0, 0)


def _this_process() -> tuple[int, int]:
    global _me
    pid = os.getpid()
    if _me[0] != pid:  # first use, or a forked child
        _me = (pid, _start_of(pid) or 0)
    return _me


class Board:
    """The shared table of one server's user limits."""

    def __init__(self, users: int = 4096, sessions: int = 16384) -> None:
        self.users, self.sessions = users, sessions
        self._records = _HEADER
        self._keys = self._records + users * _RECORD_SIZE
        self._infos = self._keys + sessions * _KEY.size
        size = self._infos + sessions * _INFO.size
        self._file = _shared_file(size)
        self._fd = self._file.fileno()
        self._map = mmap.mmap(self._fd, size)
        self._secret = os.urandom(16)
        self._thread_lock = threading.Lock()
        self._reported: set[str] = set()

    def close(self) -> None:
        self._map.close()
        self._file.close()

    def key(self, text: str) -> int:
        """The 64-bit key of a user name or a client address (never 0)."""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8, key=self._secret)
        return int.from_bytes(digest.digest(), "little") or 1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _report_once(self, what: str, message: str) -> None:
        if what not in self._reported:
            self._reported.add(what)
            log.warning("%s", message)

    # --- rates

    def charge(self, user: int, direction: int, size: int, rate: int) -> float:
        """Charge ``size`` bytes moved to ``user``'s rate in ``direction``:
        seconds to wait before moving more."""
        with self._locked():
            now = time.monotonic()  # one clock for every process of the machine
            offset = self._record(user, now) + _KEY.size + _CLOCK.size * direction
            (clock,) = _CLOCK.unpack_from(self._map, offset)
            clock, wait = charge(clock, now, size, rate)
            _CLOCK.pack_into(self._map, offset, clock)
        return wait

    def _record(self, user: int, now: float) -> int:
        """Where ``user``'s record is; a new one (in a record never used or
        one that holds nothing) if it has none."""
        first = user % self.users
        spare = None
        for step in range(self.users):
            offset = self._records + (first + step) % self.users * _RECORD_SIZE
            key, down, up = _RECORD.unpack_from(self._map, offset)
            if key == user:
                return offset
            if key == 0:
                spare = offset if spare is None else spare
                break
            if spare is None and down <= now and up <= now:
                spare = offset
        if spare is None:  # every record busy at this very moment: share one
            self._report_once("users", f"more than {self.users} users transferring with a rate at once: "
                                       "some share a rate")
            return self._records + first * _RECORD_SIZE
        _RECORD.pack_into(self._map, spare, user, 0.0, 0.0)
        return spare

    # --- sessions

    def join(self, user: int, address: int, limits: UserLimits) -> tuple[int | None, tuple[int, bool] | None]:
        """A place for a session of ``user`` from ``address``: (place, None),
        or (None, the refusal of ``userlimits.session_refusal``)."""
        me = _this_process()
        counted = limits.max_sessions or limits.max_sessions_per_ip
        with self._locked():
            addresses = []
            for index in self._places_of(user) if counted else ():  # no limit: nothing to count
                address_of, pid, start = _INFO.unpack_from(self._map, self._infos + index * _INFO.size)
                alive = start == me[1] if pid == me[0] else _start_of(pid) == start
                if alive:
                    addresses.append(address_of)
                else:
                    _KEY.pack_into(self._map, self._keys + index * _KEY.size, 0)
            refusal = session_refusal(limits, len(addresses), addresses.count(address))
            if refusal is not None:
                return None, refusal
            index = self._free_place()
            if index is None:
                self._report_once("sessions", f"more than {self.sessions} sessions logged in at once: "
                                              "the newest are not counted against max_sessions")
                return UNCOUNTED, None
            _INFO.pack_into(self._map, self._infos + index * _INFO.size, address, me[0], me[1])
            _KEY.pack_into(self._map, self._keys + index * _KEY.size, user)
            return index, None

    def leave(self, place: int, user: int) -> None:
        """Free a session's place (its own process only)."""
        if place == UNCOUNTED:
            return
        me = _this_process()
        with self._locked():
            (key,) = _KEY.unpack_from(self._map, self._keys + place * _KEY.size)
            _, pid, start = _INFO.unpack_from(self._map, self._infos + place * _INFO.size)
            if key == user and (pid, start) == me:
                _KEY.pack_into(self._map, self._keys + place * _KEY.size, 0)

    def count(self, user: int) -> int:
        """Places ``user`` holds (live or not yet found dead)."""
        with self._locked():
            return len(self._places_of(user))

    def _places_of(self, user: int) -> list[int]:
        return self._find(_KEY.pack(user))

    def _high(self) -> int:
        """How many places have ever been used at once (places at or past it are free)."""
        return _KEY.unpack_from(self._map, 0)[0]

    def _find(self, needle: bytes, first_only: bool = False) -> list[int]:
        """Indexes of the session keys equal to ``needle``, among the places
        used so far (a copy of them: ``bytes.find`` is far quicker than ``mmap.find``)."""
        keys = self._map[self._keys:self._keys + self._high() * _KEY.size]
        found = []
        pos = 0
        while True:
            pos = keys.find(needle, pos)
            if pos < 0:
                return found
            if pos % _KEY.size:
                pos += 1
                continue
            found.append(pos // _KEY.size)
            if first_only:
                return found
            pos += _KEY.size

    def _free_place(self) -> int | None:
        """The first free place: sessions stay packed at the start of the table."""
        for attempt in range(2):
            found = self._find(_EMPTY, first_only=True)
            if found:
                return found[0]
            high = self._high()
            if high < self.sessions:
                _KEY.pack_into(self._map, 0, high + 1)
                return high
            if attempt == 0:
                self._free_dead()
        return None

    def _free_dead(self) -> None:
        """Free every place whose process has ended (when none is free)."""
        me = _this_process()
        for index in range(self.sessions):
            _, pid, start = _INFO.unpack_from(self._map, self._infos + index * _INFO.size)
            if (start != me[1]) if pid == me[0] else (_start_of(pid) != start):
                _KEY.pack_into(self._map, self._keys + index * _KEY.size, 0)
