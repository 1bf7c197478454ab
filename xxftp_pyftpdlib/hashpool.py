"""Where slow password hashes run: small pools beside the event loop.

Rules that live here:

- A modern hash (scrypt: ~50 ms of CPU and 16 MiB of memory) never runs on
  the event loop; pools are per process (made anew after a fork).
- Hashing takes only idle CPU: on Linux the main pool's threads run under
  SCHED_IDLE, so a storm of logins slows the logins, not the transfers
  and the loop. With a free core the hashes run at full speed.
- No login starves: a check still waiting after ``OVERDUE`` seconds (the
  machine is busy) is also given to an overdue pool of one thread at nice
  ``OVERDUE_NICE``, which takes a small share of the CPU; whichever copy
  finishes first decides.
- Hashing gives its memory back: with glibc, allocations of 8 MiB and
  more are mapped and unmapped (scrypt's work area would otherwise stay
  in each thread's heap arena, 16 MiB per thread, for the process' life).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("xxftpd")

OVERDUE = 2.0
OVERDUE_NICE = 10
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 8 * 1024 * 1024

_pools: dict[str, ThreadPoolExecutor] = {}
_pools_pid = 0
_lock = threading.Lock()


def _idle_only() -> None:
    """Run this thread only on otherwise idle CPU (Linux: per-thread policy)."""
    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except OSError as err:
            log.debug("cannot make the hash pool idle-only: %s", err)


def _lower_priority() -> None:
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), OVERDUE_NICE)
        except OSError as err:
            log.debug("cannot lower the priority of the overdue hash pool: %s", err)


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


def _get(name: str) -> ThreadPoolExecutor:
    global _pools_pid
    with _lock:
        if _pools_pid != os.getpid():  # first use, or a forked child
            _pools.clear()
            _pools_pid = os.getpid()
            _map_large_allocations()
        pool = _pools.get(name)
        if pool is None:
            if name == "idle":
                pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                          thread_name_prefix="xxftpd-login", initializer=_idle_only)
            else:
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xxftpd-login-overdue",
                                          initializer=_lower_priority)
            _pools[name] = pool
        return pool


def pool() -> ThreadPoolExecutor:
    """The pool for slow password checks (idle CPU only)."""
    return _get("idle")


def overdue_pool() -> ThreadPoolExecutor:
    """The pool for checks that waited ``OVERDUE`` seconds in ``pool()``."""
    return _get("overdue")
