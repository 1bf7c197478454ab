"""Where password checks run, and how many may wait for one.

Rules that live here:

- A password check (one modern hash: ~50 ms of CPU and 16 MiB of memory)
  never runs on an event loop: it runs in the check pool, one per process
  (made anew after a fork), with a thread per CPU it may use.
- Checks take idle CPU only: on Linux the pool's threads run under
  SCHED_IDLE, so a storm of logins slows the logins, not the transfers
  and the loop. With a free core a check runs at full speed. SCHED_IDLE
  threads still get a sliver of a saturated CPU (the kernel gives them the
  smallest weight, not none): measured on a 2-core machine with every core
  busy, a check took 1.3 s instead of 0.05 s. So no check starves, and
  there is no second pool at a higher priority that a storm could fill.
- At most ``limit`` checks are in progress (queued or hashing) for one
  ``LoginChecks`` at a time (one per server, so per process; each
  ``--workers`` process has its own). Beyond that ``submit`` refuses at
  once, and the login is answered so, instead of waiting behind a queue
  that only idle CPU drains. A check keeps its place until its hash is
  done, even if its client has gone (the work is being done). The
  default, 16 per CPU, drains in under a second on idle cores and in
  about 20 s on cores that something else keeps busy.
- Hashing gives its memory back: with glibc, allocations of 8 MiB and
  more are mapped and unmapped (scrypt's work area would otherwise stay
  in each thread's heap arena, 16 MiB per thread, for the process' life).

This module knows nothing of FTP, sessions or event loops: the caller
learns of a finished check through its ``Future``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

log = logging.getLogger("xxftpd")

def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 2


CHECKS_PER_CPU = 16
MAX_CHECKS = CHECKS_PER_CPU * cpus()  # the default of --max-login-checks
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 8 * 1024 * 1024

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_lock = threading.Lock()


def _idle_only() -> None:
    """Run this thread only on otherwise idle CPU (Linux: per-thread policy)."""
    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except OSError as err:
            log.debug("cannot make the password check pool idle-only: %s", err)


def _map_large_allocations() -> None:
    """Serve large allocations by mmap, so freeing them returns the memory.

    glibc raises its mmap threshold to the size of each mapped block that
    is freed; after one scrypt it would keep every later work area in the
    heap. A fixed threshold stops that.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError) as err:
        log.debug("cannot set malloc's mmap threshold: %s", err)


def pool() -> ThreadPoolExecutor:
    """This process' pool for password checks (idle CPU only)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():  # first use, or a forked child
            _pool_pid = os.getpid()
            _map_large_allocations()
            _pool = ThreadPoolExecutor(max_workers=cpus(), thread_name_prefix="xxftpd-login",
                                       initializer=_idle_only)
        return _pool


class LoginChecks:
    """The password checks of one server: at most ``limit`` in progress
    (0: no limit)."""

    def __init__(self, limit: int = MAX_CHECKS) -> None:
        self.limit = limit
        self._count = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def in_progress(self) -> int:
        """Checks submitted and not done yet (queued or hashing)."""
        return self._count if self._pid == os.getpid() else 0

    def submit(self, check: Callable, *args) -> Future | None:
        """Run ``check(*args)`` in the pool; None, at once, if ``limit``
        checks are in progress already."""
        if self._pid != os.getpid():  # a forked child counts its own checks
            self._pid, self._count, self._lock = os.getpid(), 0, threading.Lock()
        with self._lock:
            if self.limit and self._count >= self.limit:
                return None
            self._count += 1
        try:
            future = pool().submit(check, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)  # also when cancelled before it ran
        return future

    def _done(self, future: Future | None) -> None:
        with self._lock:
            self._count -= 1
