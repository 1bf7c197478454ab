"""How SIGTERM and SIGINT stop a server, promptly, even when it is idle.

Rules that live here:

- SIGTERM and SIGINT raise ``KeyboardInterrupt`` in the main thread: a
  clean stop (every connection closed, partial uploads rolled back), even
  during start-up.
- Once an IO loop watches a ``SignalWake``, the exception is raised there,
  between two events, never in the middle of one: raised at any bytecode,
  it could cut a connection's close in half (out of the loop's map but
  still listed, or the reverse), and the loop's own close would then fail
  with a traceback instead of closing the rest. A forked child that has no
  loop of its own watching raises at once, as before.
- From the command's first statement, before its heavy imports, a stop
  signal is held (``hold_stop_signals``): remembered, neither the default
  death of SIGTERM (exit 143) nor a ``KeyboardInterrupt`` in the middle of
  an import. ``stop_on_signals`` then acts on a held one at once; a
  command that is not a server gives the signals back to Python's defaults
  (``release_stop_signals``) and receives a held one then.
- A signal always wakes the main thread at once. Python runs signal
  handlers in the main thread between bytecodes, so a signal the kernel
  hands to another thread (a hash pool's) or one that lands just before
  the loop blocks in ``epoll_wait`` would wait for the next network event:
  an idle server ignored SIGTERM. Python's C-level handler also writes a
  byte to the wakeup fd (``signal.set_wakeup_fd``); the loop watches that
  fd, wakes, and the handler runs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

log = logging.getLogger("xxftpd")


_watched_in: int | None = None  # the pid whose IO loop watches a SignalWake
_stop_asked = False


def request_stop() -> None:
    """Stop the server: at the IO loop's next safe point when one watches
    a ``SignalWake`` in this process, else at once."""
    global _stop_asked
    if _watched_in == os.getpid():
        _stop_asked = True  # the wakeup fd wakes the loop; SignalWake raises
        return
    raise KeyboardInterrupt


_held: int | None = None  # a stop signal that came while held


def _interrupt(signum, frame):
    request_stop()


def _hold(signum, frame):
    global _held
    _held = signum


def hold_stop_signals() -> None:
    """Remember SIGINT and SIGTERM until ``stop_on_signals`` or
    ``release_stop_signals``: the command's first step, so that a stop sent
    while it imports is a clean stop too."""
    signal.signal(signal.SIGTERM, _hold)
    signal.signal(signal.SIGINT, _hold)


def release_stop_signals() -> None:
    """Python's own SIGINT and SIGTERM handling again; a held one is delivered now."""
    global _held
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    held, _held = _held, None
    if held is not None:
        signal.raise_signal(held)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt: a clean stop, even at start-up
    (at once, here, for one that came while held)."""
    global _held
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    if _held is not None:
        _held = None
        request_stop()


def _watch(pid: int | None) -> None:
    global _watched_in
    _watched_in = pid


class SignalWake:
    """The read end of the process' signal wakeup fd.

    Register it in an IO loop (``ioloop=``) or wait on ``fileno()`` with
    ``select``. Create it in the main thread, the only one that may set
    the wakeup fd; one per process (a forked child makes its own).
    """

    def __init__(self, ioloop=None) -> None:
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._fileno = self._reader.fileno()  # the name pyftpdlib's loop sorts by
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self.ioloop = ioloop
        if ioloop is not None:
            ioloop.register(self._fileno, self, ioloop.READ)
            _watch(os.getpid())

    def fileno(self) -> int:
        return self._fileno

    def drain(self) -> None:
        """Empty the pipe; the handlers themselves have run already."""
        try:
            while self._reader.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # the IO loop's side
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        global _stop_asked
        self.drain()
        if _stop_asked:
            _stop_asked = False
            raise KeyboardInterrupt  # a safe point: between two events

    def handle_close(self) -> None:
        self.close()

    def handle_error(self) -> None:
        log.exception("signal wakeup failed")
        self.close()

    def close(self) -> None:
        if self._reader.fileno() < 0:
            return
        if self.ioloop is not None:
            self.ioloop.unregister(self._fileno)
            _watch(None)
        try:
            old = signal.set_wakeup_fd(-1)
            if old not in (-1, self._writer.fileno()):
                signal.set_wakeup_fd(old)  # a later one's: leave it set
        except ValueError:  # not the main thread: a closed fd left set is harmless
            pass
        self._reader.close()
        self._writer.close()
