"""LoopWake: calls from other threads into an IO loop, without polling.

Rules that live here:

- A thread hands a call to a loop with ``LoopWake.call``; the loop runs it
  on its own thread at its next turn. The loop is woken at once through an
  eventfd (a pipe where there is none) that it watches like a connection:
  nothing is scheduled, nothing runs while the call is awaited.
- One waker per loop, registered in it only while calls are expected
  (``expect`` before the call is arranged, one call per ``expect``): the
  loop of a thread-per-connection server ends when nothing is registered
  in it, and must still end.
- A call that arrives after its loop closed the waker is dropped (what it
  was for went with the loop); the descriptor is never written once
  closed, so a call can't write into a file that took its number.

This module knows nothing of FTP or logins; of pyftpdlib's loop it uses
``register``, ``unregister`` and ``READ`` (the loop calls back
``readable``, ``writable``, ``handle_read_event``, ``handle_close``,
``handle_error`` and ``close``, and sorts by ``_fileno`` when it closes).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Callable

log = logging.getLogger("xxftpd")


class LoopWake:
    """The door of one IO loop for calls from other threads."""

    _wakers: dict[int, LoopWake] = {}  # id(ioloop) -> its waker, while calls are expected
    _wakers_lock = threading.Lock()

    @classmethod
    def expect(cls, ioloop) -> LoopWake:
        """The waker of ``ioloop`` (made and registered if need be), which
        stays registered until one more call has run there. Call it on the
        loop's own thread."""
        with cls._wakers_lock:
            wake = cls._wakers.get(id(ioloop))
            if wake is None or wake.ioloop is not ioloop or wake._fileno is None:
                wake = cls._wakers[id(ioloop)] = cls(ioloop)
            wake._expected += 1
        return wake

    def __init__(self, ioloop) -> None:
        self.ioloop = ioloop
        self._calls: collections.deque[tuple[Callable, tuple]] = collections.deque()
        self._lock = threading.Lock()
        self._expected = 0
        self._signalled = False
        if hasattr(os, "eventfd"):
            self._fileno: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._writer = self._fileno
        else:  # pragma: no cover - not Linux
            self._fileno, self._writer = os.pipe()
            for fd in (self._fileno, self._writer):
                os.set_blocking(fd, False)
        ioloop.register(self._fileno, self, ioloop.READ)

    def call(self, function: Callable, *args) -> None:
        """Run ``function(*args)`` on the loop's thread soon (any thread may call this)."""
        with self._lock:
            if self._fileno is None:
                return  # the loop closed: nobody is waiting any more
            self._calls.append((function, args))
            if self._signalled:
                return
            self._signalled = True
            try:
                if self._writer == self._fileno:
                    os.eventfd_write(self._writer, 1)
                else:  # pragma: no cover - not Linux
                    os.write(self._writer, b"\0")
            except BlockingIOError:  # full: the loop is woken anyway
                pass

    def _drain(self) -> None:
        try:
            if self._writer == self._fileno:
                os.eventfd_read(self._fileno)
            else:  # pragma: no cover - not Linux
                while os.read(self._fileno, 512):
                    pass
        except (BlockingIOError, InterruptedError):
            pass

    # the IO loop's side
    def fileno(self) -> int | None:
        return self._fileno

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        with self._lock:
            if self._fileno is None:
                return
            self._signalled = False
            self._drain()
            calls = list(self._calls)
            self._calls.clear()
        for function, args in calls:
            self._expected -= 1
            try:
                function(*args)
            except Exception:  # the callee's own failure: keep serving the others
                log.exception("a call handed to the IO loop failed")
        if self._expected <= 0:
            self.close()

    def handle_close(self) -> None:
        self.close()

    def handle_error(self) -> None:
        log.exception("IO loop wakeup failed")

    def close(self) -> None:
        with self._lock:
            fileno, self._fileno = self._fileno, None
            self._calls.clear()
        if fileno is None:
            return
        with self._wakers_lock:
            if self._wakers.get(id(self.ioloop)) is self:
                del self._wakers[id(self.ioloop)]
        try:
            self.ioloop.unregister(fileno)
        finally:
            os.close(fileno)
            if self._writer != fileno:  # pragma: no cover - not Linux
                os.close(self._writer)
