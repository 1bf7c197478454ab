"""Where slow password hashes run: a small pool beside the event loop.

Rules that live here:

- A modern hash (scrypt: ~50 ms of CPU and 16 MiB of memory) never runs on
  the event loop; one pool per process (made anew after a fork).
- Hashing yields the CPU: on Linux the pool's threads run at nice 19, so
  a storm of logins slows the logins, not the transfers and the loop.
  Idle CPU still goes to the hashes at full speed.
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

NICE = 19
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 8 * 1024 * 1024

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_lock = threading.Lock()


def _yield_cpu() -> None:
    """Lower this thread's priority (only Linux has per-thread nice values)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except OSError as err:
            log.debug("cannot lower the priority of the hash pool: %s", err)


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
    """The process's pool for slow password checks."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _map_large_allocations()
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                       thread_name_prefix="xxftpd-login", initializer=_yield_cpu)
            _pool_pid = os.getpid()
        return _pool
