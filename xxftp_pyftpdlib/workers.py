"""``--workers N``: pre-forked processes sharing one listening socket.

Rules that live here:

- The parent binds the socket and forks N workers; each worker builds its
  own async server and IO loop around the inherited socket (an epoll set
  created before a fork would be shared by every process).
- A worker that dies of a crash is restarted (at most ``MAX_RESTARTS``
  times in all); one that exits cleanly is not.
- SIGTERM or SIGINT to the parent stops every worker (SIGTERM, then
  SIGKILL after ``STOP_TIMEOUT`` seconds) and exits 0: no orphans.
- A signal to the whole process group (Ctrl-C, systemd's control group)
  reaches every worker twice, from the terminal and from the parent: a
  worker stops at the first and ignores the next, so its clean stop is
  never cut short (the parent's SIGKILL still ends one that hangs).
- Quotas stay exact across workers (the ledgers lock with ``flock``) and
  bans are shared (a manager process), as with ``multi-proc``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time

from pyftpdlib.servers import FTPServer

from .signals import SignalWake, request_stop
from .status import publish, withdraw

log = logging.getLogger("xxftpd")

MAX_RESTARTS = 100
STOP_TIMEOUT = 10.0


def _stopping(signum, frame) -> None:
    """SIGTERM and SIGINT once stopping: nothing more to do. (Not SIG_IGN:
    a signal already caught by Python's C handler would then be reported
    as "ignored due to race condition", with a traceback.)"""


def _stop_once(signum, frame) -> None:
    """A worker's SIGTERM and SIGINT: stop, once."""
    signal.signal(signal.SIGTERM, _stopping)
    signal.signal(signal.SIGINT, _stopping)
    request_stop()


def _run_worker(server: FTPServer, number: int, parents: SignalWake) -> None:
    """In a forked child: serve the shared socket until told to stop."""
    try:
        server.ioloop._poller.close()  # the parent's epoll set: not ours to use
    except (AttributeError, OSError):
        pass
    parents.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _stop_once)
    signal.signal(signal.SIGINT, _stop_once)
    worker = type(server)(server.socket, server.handler, ioloop=type(server.ioloop)())
    worker.max_cons = server.max_cons
    worker.max_cons_per_ip = server.max_cons_per_ip
    worker.limits = server.limits  # each worker keeps its own admission table
    SignalWake(worker.ioloop)
    publish(server.handler.authorizer.root)  # this worker's sessions, for `xxftpd who`
    log.info("worker %d (pid %d) serving", number, os.getpid())
    status = 0
    try:
        worker.serve_forever(handle_exit=True)
    except BaseException:  # never let a worker fall back into the parent's code
        log.exception("worker %d failed", number)
        status = 1
    finally:
        withdraw(server.handler.authorizer.root)
        os._exit(status)


def _wake_only(signum, frame) -> None:
    """SIGCHLD: nothing to do but wake the supervisor (through the wakeup fd)."""


def _exited():
    """(pid, status) of each child that has ended, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def serve_workers(server: FTPServer, count: int) -> None:
    """Fork ``count`` workers around ``server``'s socket and supervise them."""
    children: dict[int, int] = {}
    wake = SignalWake()  # a signal or a child's exit wakes the select below
    previous = signal.signal(signal.SIGCHLD, _wake_only)

    def start(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            _run_worker(server, number, wake)
        children[pid] = number

    for number in range(count):
        start(number)
    restarts = 0
    try:
        while children and restarts <= MAX_RESTARTS:
            select.select([wake], [], [], 1.0)
            wake.drain()
            for pid, status in _exited():
                number = children.pop(pid, None)
                if number is None:
                    continue  # not a worker (e.g. the ban manager)
                if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        log.error("workers keep failing; giving up after %d restarts", MAX_RESTARTS)
                        break
                    log.warning("worker %d (pid %d) died (status %d); restarting", number, pid, status)
                    start(number)
    except KeyboardInterrupt:
        log.info("stopping %d worker(s)", len(children))
    finally:
        signal.signal(signal.SIGCHLD, previous)
        for signum in (signal.SIGTERM, signal.SIGINT):  # stopping already: the group's next signal
            signal.signal(signum, _stopping)
        wake.close()
        _stop(children)


def _stop(children: dict[int, int]) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            children.pop(pid, None)
    deadline = time.monotonic() + STOP_TIMEOUT
    while children and time.monotonic() < deadline:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.pop(pid, None)
        time.sleep(0.02)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
