"""The listening socket: it plans for file descriptors and never closes
while the server runs.

Rules that live here:

- At start the soft ``RLIMIT_NOFILE`` is raised to the hard limit. If that
  is still below what ``--max-cons`` needs (``FDS_PER_SESSION`` a session:
  control, data, passive listener; plus the reserve below) the log says so
  in one warning line.
- The last ``reserve(limit)`` descriptors are kept for the sessions already
  served (their data connections, files, ledgers): a new connection whose
  descriptor falls among them is refused with ``421`` at once.
- When ``accept()`` fails for want of descriptors (``EMFILE``, ``ENFILE``,
  or kernel memory), a spare descriptor kept for that moment is given up
  to accept and refuse (``421``) the connections waiting, then taken
  again; the listener stops polling for ``PAUSE`` seconds (a timer, no
  busy loop) and then listens again. Any other failure while accepting is
  one log line and the same pause. The listener never closes on its own.

- ``::`` (``addresses.ALL``, the default host) is one dual-stack socket
  (``IPV6_V6ONLY`` off, whatever the system's default); on a machine
  without IPv6 it is ``0.0.0.0``. An accepted IPv4 client of that
  socket is counted by its IPv4 address (``addresses.plain``).
- The server keeps the admission table (``admission.Table``) of the
  connections it accepted: a newcomer is admitted, displaces strangers
  or is refused there, before pyftpdlib counts it; strangers out of time
  to log in are told to leave by a sweep once a second.

This module does not decide who may stay (``admission`` does) nor know the
FTP protocol beyond its one refusal line.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

from .addresses import ALL, IPV4_ALL, plain
from .admission import Limits, Place, Table

__all__ = ["Admitting", "FDS_PER_SESSION", "PAUSE", "Listener", "listen_on", "raise_open_files_limit", "reserve"]

log = logging.getLogger("xxftpd")

FDS_PER_SESSION = 3  # control, data, passive listener
PAUSE = 0.1  # seconds without accepting after running out of descriptors
DRAIN = 64  # waiting connections refused at most per shortage
REFUSAL = b"421 Server busy (out of resources), try again later.\r\n"
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LOG_EVERY = 10.0  # seconds between two log lines about refused connections


def reserve(limit: int) -> int:
    """Descriptors kept for the sessions already served, out of ``limit``."""
    return max(32, limit // 16)


def needed(max_cons: int) -> int:
    """Descriptors ``max_cons`` sessions may use at once, with the reserve's floor."""
    return FDS_PER_SESSION * max_cons + reserve(0)


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when there is no limit to plan for."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit(max_cons: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the warning to log
    when that is still too low for ``max_cons`` sessions, else None."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.debug("cannot raise the open files limit to %s: %s", hard, err)
    if soft == resource.RLIM_INFINITY or not max_cons or soft >= needed(max_cons):
        return None
    room = max(0, (soft - reserve(soft)) // FDS_PER_SESSION)
    return (f"open files limit {soft} is below the {needed(max_cons)} that --max-cons {max_cons} needs: "
            f"room for about {room} sessions; raise the hard limit (ulimit -Hn, LimitNOFILE=) "
            f"or lower --max-cons")


def listen_on(host: str, port: int):
    """What a pyftpdlib server listens on: a bound dual-stack socket for
    ``ALL``, else the address (pyftpdlib binds it)."""
    if host != ALL:
        return host, port
    if not socket.has_dualstack_ipv6():
        log.info("no IPv6 here: listening on %s (IPv4) instead of %s", IPV4_ALL, ALL)
        return IPV4_ALL, port
    return socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=True)


def _spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _refuse(conn) -> None:
    """Answer a connection we have no room for, and close it."""
    try:
        conn.setblocking(False)
        conn.send(REFUSAL)
    except OSError:
        pass
    conn.close()


class Listener:
    """Mixed into a pyftpdlib server (an ``Acceptor``): the accept path."""

    _spare_fd: int | None = None
    _paused = None
    _ceiling: int | None = None
    _refused = 0
    _logged_at = 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._spare_fd = _spare()
        limit = open_files_limit()
        self._ceiling = None if limit is None else limit - reserve(limit)
        self._near_limit = (f"open files near the limit of {limit} "
                            f"(the last {reserve(limit or 0)} are kept for the sessions served)")

    def handle_accepted(self, sock, addr) -> None:
        # pyftpdlib counts the address here and uncounts the session's
        # ``remote_ip``, which the handler writes as ``plain`` does
        return super().handle_accepted(sock, (plain(addr[0]), *addr[1:]))

    def accept(self):
        """asyncore's accept (None when nothing is waiting), minus the
        connections we have no descriptors for."""
        try:
            pair = super().accept()
        except OSError as err:
            if err.errno not in _STARVED:
                raise
            self._starved(err)
            return None
        if pair is not None and self._ceiling is not None and pair[0].fileno() >= self._ceiling:
            _refuse(pair[0])
            self._note_refused(self._near_limit)
            return None
        return pair

    def _starved(self, err: OSError) -> None:
        """Out of descriptors: refuse who is waiting, pause, listen again."""
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        refused = 0
        while refused < DRAIN:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                break  # nothing waiting, or still no descriptor for it
            _refuse(conn)
            refused += 1
        self._spare_fd = _spare()
        self._note_refused(os.strerror(err.errno), refused)
        self._pause()

    def _note_refused(self, why: str, count: int = 1) -> None:
        self._refused += count
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            log.warning("refusing new connections: %s (%d refused)", why, self._refused)
            self._logged_at, self._refused = now, 0

    def _pause(self) -> None:
        if self._paused is not None or self._closed:
            return
        self.modify_ioloop_events(0)
        self._paused = self.ioloop.call_later(PAUSE, self._resume, _errback=self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self.modify_ioloop_events(self.ioloop.READ)

    def handle_error(self) -> None:
        """pyftpdlib logs a traceback and closes the listener for good;
        here one line, a pause, and the listener stays."""
        err = sys.exc_info()[1]
        log.error("error while accepting a connection: %s: %s", type(err).__name__, err)
        log.debug("accept failure", exc_info=True)
        self._pause()

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        super().close()


SWEEP = 1.0  # seconds between two looks for strangers out of time to log in


def _wake(place: Place) -> None:
    if place.wake is not None:
        try:
            place.wake()
        except OSError:  # already gone
            pass


class Admitting:
    """Mixed into a pyftpdlib server: its admission table.

    ``limits`` is set by whoever builds the server (None: pyftpdlib's own
    counting alone). The table is made in the process that accepts, at
    its first connection, so a forked ``--workers`` worker has its own.
    """

    limits: Limits | None = None
    places_across_processes = False  # True where each connection gets a process
    _table: Table | None = None
    _admitted = False

    def admit(self, ip: str) -> tuple[Place | None, str | None]:
        """A place for a new connection from ``ip``, or why not."""
        if self.limits is None:
            return None, None
        if self._table is None:
            self._table = Table(self.limits, self.places_across_processes)
            if self.limits.login_timeout:
                self.ioloop.call_every(SWEEP, self._sweep)
        place, refusal, displaced = self._table.admit(ip)
        for other in displaced:
            _wake(other)
        # pyftpdlib's count of this connection comes next: the table has decided
        self._admitted = place is not None
        return place, refusal

    def admitted_now(self) -> bool:
        """True once, right after the table admitted a connection."""
        admitted, self._admitted = self._admitted, False
        return admitted

    def _sweep(self) -> None:
        # never raises: pyftpdlib would stop a periodic call that did
        try:
            for place in self._table.overdue():
                _wake(place)
        except Exception as err:
            log.error("cannot close connections out of time to log in: %s: %s", type(err).__name__, err)
