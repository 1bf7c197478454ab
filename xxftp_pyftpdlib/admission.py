"""Who gets a place: connections that never log in can't lock anyone out.

Rules that live here:

- A connection is a *stranger* from the moment it is accepted until it
  logs in, and again after ``REIN`` (or ``USER`` once logged in).
- Four limits, each 0 for none: ``max_cons`` (all connections),
  ``max_cons_per_ip`` (all from one address), ``max_unauthenticated``
  (strangers) and ``max_unauthenticated_per_ip`` (strangers from one
  address). One address is an IPv4 address or an IPv6 /64 (one host's
  share of IPv6 space).
- A newcomer that finds a limit full takes the place of the oldest
  stranger that this limit counts: for the per-address limits, the oldest
  stranger from the newcomer's own address; for the totals, the oldest
  stranger of the address with the most strangers; a stranger whose
  password is being checked is passed over while there are others (a
  check takes a modern hash's time, and churning newcomers would
  otherwise displace every login in progress). Only when the limit
  counts no stranger (every place is a logged-in session) is the newcomer
  refused. A logged-in session is never displaced.
- A stranger that has not logged in ``login_timeout`` seconds after it
  connected (or after its REIN) is closed, whatever it sends meanwhile.
- One table per process that accepts (one per ``--workers`` worker); its
  methods may be called from several threads. With a process per
  connection, each connection's state (logged in, deadline, why it must
  leave) lives in memory shared with the process that accepts.

This module knows nothing of sockets, pyftpdlib or how a connection is
told to leave: ``Place.wake`` is set by the adapter that does.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .addresses import source_of

__all__ = ["Limits", "Place", "Table", "TOO_MANY", "TOO_MANY_FROM_ADDRESS", "DISPLACED", "LOGIN_TIMED_OUT"]

TOO_MANY = "Too many connections. Service temporarily unavailable."
TOO_MANY_FROM_ADDRESS = "Too many connections from the same IP address."
DISPLACED = "Too many connections that have not logged in; closing the oldest."
LOGIN_TIMED_OUT = "Login timed out."
_REASONS = {1: DISPLACED, 2: LOGIN_TIMED_OUT}  # shared memory holds a code, not a text


@dataclass(frozen=True)
class Limits:
    max_cons: int = 0
    max_cons_per_ip: int = 0
    max_unauthenticated: int = 0
    max_unauthenticated_per_ip: int = 0
    login_timeout: float = 0


class _State(ctypes.Structure):
    """What the connection's own thread or process writes and the table reads."""

    _fields_ = [("logged_in", ctypes.c_bool), ("deadline", ctypes.c_double), ("leaving", ctypes.c_int),
                ("checking", ctypes.c_bool)]


class Place:
    """One connection's place in the table."""

    __slots__ = ("ip", "seq", "state", "wake", "alive", "_table")

    def __init__(self, table: "Table", ip: str, seq: int, state: _State) -> None:
        self.ip = ip
        self.seq = seq
        self.state = state
        self._table = table
        self.wake: Callable[[], None] | None = None  # tells the connection to leave (the adapter's)
        self.alive: Callable[[], bool] | None = None  # set when another process serves the connection

    @property
    def stranger(self) -> bool:
        return not self.state.logged_in

    @property
    def checking(self) -> bool:
        """A password of this stranger is being checked."""
        return self.state.checking

    @checking.setter
    def checking(self, value: bool) -> None:
        self.state.checking = value

    @property
    def leaving(self) -> str | None:
        """Why this connection must leave, if it must."""
        return _REASONS.get(self.state.leaving)

    def logged_in(self) -> None:
        self.state.logged_in = True

    def logged_out(self) -> None:
        """A stranger again: the time to log in starts over."""
        self.state.deadline = self._table.deadline()
        self.state.logged_in = False

    def left(self) -> None:
        self._table.remove(self)


class Table:
    """The places of one accepting process."""

    def __init__(self, limits: Limits, across_processes: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._places: dict[int, Place] = {}  # oldest first
        self._seq = itertools.count()
        if across_processes:
            from multiprocessing.sharedctypes import RawValue
            self._new_state = lambda: RawValue(_State)
        else:
            self._new_state = _State

    def __len__(self) -> int:
        return len(self._places)

    def deadline(self) -> float:
        timeout = self.limits.login_timeout
        return self._clock() + timeout if timeout else 0.0

    def admit(self, ip: str) -> tuple[Place | None, str | None, list[Place]]:
        """(the newcomer's place, None, the places it displaces) or
        (None, why it is refused, [])."""
        ip = source_of(ip)
        limits = self.limits
        with self._lock:
            self._prune()
            places = list(self._places.values())
            gone: set[int] = set()
            checks = (
                (limits.max_cons_per_ip, lambda p: p.ip == ip, False, TOO_MANY_FROM_ADDRESS),
                (limits.max_unauthenticated_per_ip, lambda p: p.ip == ip and p.stranger, False, TOO_MANY_FROM_ADDRESS),
                (limits.max_unauthenticated, lambda p: p.stranger, True, TOO_MANY),
                (limits.max_cons, lambda p: True, True, TOO_MANY),
            )
            for limit, counts, any_address, refusal in checks:
                if not limit:
                    continue
                while True:
                    counted = [p for p in places if p.seq not in gone and counts(p)]
                    if len(counted) < limit:
                        break
                    victim = _victim([p for p in counted if p.stranger], any_address)
                    if victim is None:
                        return None, refusal, []
                    gone.add(victim.seq)
            displaced = [self._places.pop(seq) for seq in sorted(gone)]
            for place in displaced:
                place.state.leaving = 1
            seq = next(self._seq)
            place = Place(self, ip, seq, self._new_state())
            place.state.deadline = self.deadline()
            self._places[seq] = place
            return place, None, displaced

    def overdue(self) -> list[Place]:
        """The strangers past their time to log in, taken out of the table."""
        now = self._clock()
        with self._lock:
            self._prune()
            late = [p for p in self._places.values()
                    if p.stranger and p.state.deadline and p.state.deadline <= now]
            for place in late:
                del self._places[place.seq]
                place.state.leaving = 2
            return late

    def remove(self, place: Place) -> None:
        with self._lock:
            self._places.pop(place.seq, None)

    def _prune(self) -> None:
        """Forget the places whose process has ended."""
        dead = [seq for seq, p in self._places.items() if p.alive is not None and not p.alive()]
        for seq in dead:
            del self._places[seq]


def _victim(strangers: list[Place], any_address: bool) -> Place | None:
    """The stranger to displace: the oldest (of the most represented
    address, when the limit counts every address), passing over those
    whose password is being checked while there are others."""
    strangers = [p for p in strangers if not p.checking] or strangers
    if not strangers or not any_address:
        return strangers[0] if strangers else None
    by_ip: dict[str, list[Place]] = {}
    for place in strangers:  # oldest first
        by_ip.setdefault(place.ip, []).append(place)
    crowd = max(by_ip.values(), key=lambda group: (len(group), -group[0].seq))
    return crowd[0]
