"""File hashes for HASH (draft-bryan-ftpext-hash-02) and the X-commands.

Rules that live here:

- The algorithms, by the names of the draft (IANA's "Hash Function
  Textual Names", CRC32 besides): SHA-256 (the default), SHA-512, SHA-1,
  MD5, CRC32. A name is matched without regard to case. The legacy
  commands each name one of them (``LEGACY``).
- A hash covers a *span* of the file: the whole file, or the bytes
  ``start`` to ``end`` inclusive set by RANG; an end beyond the file is
  cut to its last byte, a start beyond it is refused (``BadRange``).
  An empty file's whole span is ``0-0``, as the draft wants an end no
  smaller than the start.
- A file is hashed from a descriptor the caller opened (the server opens
  it as a download is opened: resolution, permission, no link followed),
  never by its path again, in a pool of ``WORKERS`` threads that run on
  idle CPU only (``SCHED_IDLE``, as the password checks: hashing never
  starves a login check; nice ``NICENESS`` where that policy is missing);
  daemon threads, so that a server told to stop does not wait for a hash. At most
  ``MAX_JOBS`` hashes are queued or running in a process, and at most
  ``MAX_JOBS_PER_OWNER`` of them for one owner (the user who asked: one
  user's sessions can't take every place); one more is refused at once
  (``Busy``, FTP 450). A job runs to its end even if its client has left
  (a session that waits for a hash reads nothing, so it learns that its
  client left only then) and counts for its owner meanwhile. Two requests
  for the same hash of the same file version share one job, counted for
  its first owner only.
- A path in double quotes is taken without them (``unquote``): WinSCP
  quotes names with spaces, as FileZilla Server expects.
- The results are cached per file version: (device, inode, size, mtime,
  ctime) and the algorithm and span, in a least-recently-used table of
  ``CACHE_ENTRIES`` entries (a few MB at most). The real path is not part
  of the key: a rename changes the ctime anyway, and the same inode under
  two names is the same bytes. A file that changed while it was read
  (another stat after the last byte) is not answered (``Changed``, FTP
  450). A hash is cached only if the file's last change is ``SETTLED``
  seconds older than the hash's first stat: a write in the same tick of
  the file system's clock as that stat would leave the times unchanged,
  and file systems that keep times to the second (ext3, ext4 with small
  inodes, some NFS) or two (FAT) have coarse ticks; a file deleted and
  written anew in the same tick may even get the same inode back.
- ``cached(real_path)`` answers from the cache alone (another part of the
  server may ask for the SHA-256 of a file it just wrote); ``remember``
  fills it with a hash computed elsewhere (uploads do not: their bytes
  go to the disk by ``splice``, never through Python).

What this module must not know: FTP replies, sessions, sockets, the IO
loop (a caller learns of a finished hash through its ``Future``), trees,
permissions.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import queue
import stat as stat_mod
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, NamedTuple

from . import beneath
from .hashpool import cpus

log = logging.getLogger("xxftpd")

__all__ = ["ALGORITHMS", "DEFAULT", "LEGACY", "Busy", "BadRange", "Changed", "Digest", "Span", "algorithm",
           "feat_lines", "parse_range", "unquote", "hasher", "cached", "remember", "stats"]


class _Crc32:
    """CRC32 with hashlib's update/hexdigest."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


ALGORITHMS: dict[str, Callable] = {  # FEAT order
    "SHA-256": hashlib.sha256,
    "SHA-512": hashlib.sha512,
    "SHA-1": hashlib.sha1,
    "MD5": hashlib.md5,
    "CRC32": _Crc32,
}
DEFAULT = "SHA-256"
LEGACY = {"XSHA256": "SHA-256", "XSHA512": "SHA-512", "XSHA1": "SHA-1", "XMD5": "MD5", "XCRC": "CRC32"}
_BY_KEY = {name.replace("-", "").lower(): name for name in ALGORITHMS}

WORKERS = max(1, min(4, cpus()))  # threads hashing at once, per process
MAX_JOBS = 4 * WORKERS  # hashes queued or running, per process; one more is refused
MAX_JOBS_PER_OWNER = 2  # of those, for one user
NICENESS = 10  # the hashing threads' nice value: the IO loop goes first on a busy CPU
CHUNK = 1 << 20  # bytes read per system call
CACHE_ENTRIES = 4096
SETTLED = 3.0  # seconds from a file's last change to the hash's first stat before the hash is cached


def algorithm(name: str) -> str | None:
    """The draft's name of the algorithm ``name`` (any case; ``sha256``
    too), or None if unknown."""
    return _BY_KEY.get(name.strip().replace("-", "").lower())


def feat_lines(current: str) -> list[str]:
    """The FEAT lines of hashing: HASH with the session's choice starred,
    and the legacy commands (clients look for them there)."""
    names = ";".join(name + ("*" if name == current else "") for name in ALGORITHMS)
    return [f"HASH {names}", *LEGACY]


class Span(NamedTuple):
    """Bytes ``start`` to ``end`` inclusive (RANG's numbers)."""

    start: int
    end: int


def parse_range(text: str) -> Span | None:
    """RANG's argument: a Span, or None for ``1 0`` (back to whole files).
    ValueError for anything else, with the reason."""
    words = text.split()
    if len(words) != 2 or not all(word.isascii() and word.isdigit() for word in words):
        raise ValueError("RANG needs two decimal numbers: start and end")
    start, end = int(words[0]), int(words[1])
    if (start, end) == (1, 0):
        return None
    if start > end:
        raise ValueError("RANG's start is past its end")
    return Span(start, end)


def unquote(path: str) -> str:
    """The path argument of HASH or an X-command: WinSCP puts a name with
    spaces in double quotes (some servers take more arguments after it),
    and FileZilla Server takes a path that starts and ends with one
    without them; so do we."""
    if len(path) >= 2 and path[0] == path[-1] == '"':
        return path[1:-1]
    return path


class Busy(Exception):
    """As many hashes as allowed are in progress in this process."""

    def __init__(self, limit: int, yours: bool = False) -> None:
        super().__init__(limit)
        self.limit, self.yours = limit, yours

    def __str__(self) -> str:
        if self.yours:
            return f"{self.limit} hashes of yours are in progress; try again later"
        return f"{self.limit} hashes are in progress; try again later"


class BadRange(Exception):
    """RANG's start is beyond the end of the file."""

    def __init__(self, start: int, size: int) -> None:
        super().__init__(start, size)
        self.start, self.size = start, size

    def __str__(self) -> str:
        return f"RANG starts at byte {self.start}, beyond the end of the file ({self.size} bytes)"


class Changed(Exception):
    """The file changed while it was being read."""

    def __str__(self) -> str:
        return "the file changed while it was being hashed; try again"


@dataclass(frozen=True)
class Digest:
    """A finished hash: algorithm, the bytes covered (inclusive) and the hex value."""

    algorithm: str
    start: int
    end: int
    hex: str


class _Version(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _version(st: os.stat_result) -> _Version:
    return _Version(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_Key = tuple  # (_Version, algorithm, start, stop)


class _Cache:
    """A thread-safe LRU table of digests, with counters of its use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[_Key, str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: _Key) -> str | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: _Key, value: str) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def peek(self, key: _Key) -> str | None:
        """Look without counting (``cached`` is not a client's request)."""
        with self._lock:
            return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)


def _span(span: Span | None, size: int) -> tuple[int, int]:
    """(start, stop) of the bytes to hash, stop exclusive; BadRange."""
    if span is None:
        return 0, size
    if span.start >= size and (span.start, size) != (0, 0):
        raise BadRange(span.start, size)
    return span.start, min(span.end + 1, size)


def _digest(fd: int, name: str, start: int, stop: int) -> str:
    """The hex digest of bytes ``start``..``stop`` of ``fd``; Changed if fewer are there."""
    digest = ALGORITHMS[name]()
    buffer = bytearray(min(CHUNK, max(stop - start, 1)))
    view = memoryview(buffer)
    offset = start
    try:
        os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    while offset < stop:
        want = min(len(buffer), stop - offset)
        got = os.preadv(fd, [view[:want]], offset)
        if got == 0:
            raise Changed()  # cut short while being read
        digest.update(view[:got])  # hashlib and zlib let go of the GIL for big buffers
        offset += got
    return digest.hexdigest()


def _idle() -> None:
    """Run this thread on idle CPU only, as the password checks run
    (Linux: the scheduling policy is per thread); else below the loop's
    priority (nice ``NICENESS``)."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError) as err:
        log.debug("hashing threads not on idle CPU only: %s", err)
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError) as err:
        log.debug("cannot lower the priority of the hashing threads: %s", err)


class _Threads:
    """Up to ``size`` daemon threads running calls from a queue.

    Not a ThreadPoolExecutor: Python waits for an executor's threads to
    finish their work before the process may exit, and a server told to
    stop must not wait for the hash of a file of many GiB.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, function: Callable, *args) -> None:
        with self._lock:
            if self._started < self.size:
                self._started += 1
                threading.Thread(target=self._work, name=f"xxftpd-hash-{self._started}", daemon=True).start()
        self._queue.put((function, args))

    def _work(self) -> None:
        _idle()
        while True:
            function, args = self._queue.get()
            try:
                function(*args)
            except BaseException:  # the call's own failure is its Future's; this is a bug
                log.exception("a hashing job failed")


class Hasher:
    """The hashing pool and cache of one process (made anew after a fork)."""

    def __init__(self, workers: int = WORKERS, max_jobs: int = MAX_JOBS, cache_entries: int = CACHE_ENTRIES,
                 max_jobs_per_owner: int = MAX_JOBS_PER_OWNER) -> None:
        self.max_jobs, self.max_jobs_per_owner = max_jobs, max_jobs_per_owner
        self._owners: dict[_Key, str] = {}  # who asked for each job first
        self.cache = _Cache(cache_entries)
        self._threads = _Threads(workers)
        self._jobs: dict[_Key, Future] = {}
        self._lock = threading.Lock()
        self.hashed_bytes = 0  # read by finished jobs

    @property
    def in_progress(self) -> int:
        return len(self._jobs)

    def begin(self, file, name: str, span: Span | None = None, owner: str = "") -> Digest | Future:
        """The hash ``name`` of the open ``file`` (over ``span``), asked by
        ``owner``: a Digest at once from the cache, else a Future of one.
        Takes ``file`` over (closed when done). Raises Busy, BadRange, OSError."""
        began = time.time_ns()
        try:
            st = os.fstat(file.fileno())
            start, stop = _span(span, st.st_size)
            key = (_version(st), name, start, stop)
            end = max(start, stop - 1)
            value = self.cache.get(key)
            if value is not None:
                file.close()
                return Digest(name, start, end, value)
            with self._lock:
                running = self._jobs.get(key)
                if running is None and len(self._jobs) >= self.max_jobs:
                    raise Busy(self.max_jobs)
                if running is None and sum(o == owner for o in self._owners.values()) >= self.max_jobs_per_owner:
                    raise Busy(self.max_jobs_per_owner, yours=True)
                new = running is None
                if new:
                    running = self._jobs[key] = Future()
                    self._owners[key] = owner
                asked = _chain(running, lambda hex_: Digest(name, start, end, hex_))
        except BaseException:
            file.close()
            raise
        if not new:  # the same bytes are being hashed for another request
            file.close()
            return asked
        self._threads.submit(self._run, file, st, began, key, running)
        return asked

    def _run(self, file, st: os.stat_result, began: int, key: _Key, future: Future) -> None:
        try:
            version, name, start, stop = key
            fd = file.fileno()
            value = _digest(fd, name, start, stop)
            with self._lock:
                self.hashed_bytes += stop - start
            if _version(os.fstat(fd)) != version:
                raise Changed()
            if began - max(st.st_ctime_ns, st.st_mtime_ns) >= SETTLED * 1e9:
                self.cache.put(key, value)
        except BaseException as err:
            self._end(key, future, error=err)
        else:
            self._end(key, future, value=value)
        finally:
            file.close()

    def _end(self, key: _Key, future: Future, value: str | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._jobs.pop(key, None)
            self._owners.pop(key, None)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def cached(self, real_path: str, name: str = "sha256") -> str | None:
        """The cached hash ``name`` of the whole file at ``real_path`` (a
        checked path, see ``beneath``), or None if not at hand."""
        canonical = algorithm(name)
        try:
            st = beneath.lstat(real_path)
        except OSError:
            return None
        if canonical is None or not stat_mod.S_ISREG(st.st_mode):
            return None
        return self.cache.peek((_version(st), canonical, 0, st.st_size))

    def remember(self, st: os.stat_result, name: str, value: str) -> None:
        """Cache the hash ``name`` of the whole file version ``st`` (computed elsewhere)."""
        canonical = algorithm(name)
        if canonical is not None and stat_mod.S_ISREG(st.st_mode):
            self.cache.put((_version(st), canonical, 0, st.st_size), value)


def _chain(source: Future, convert: Callable[[str], Digest]) -> Future:
    """A Future of ``convert(result)`` of ``source`` (its exception as is)."""
    target: Future = Future()

    def done(finished: Future) -> None:
        error = finished.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(convert(finished.result()))

    source.add_done_callback(done)
    return target


_hasher: Hasher | None = None
_hasher_pid = 0
_hasher_lock = threading.Lock()


def hasher() -> Hasher:
    """This process' Hasher (a forked worker makes its own)."""
    global _hasher, _hasher_pid
    with _hasher_lock:
        if _hasher is None or _hasher_pid != os.getpid():
            _hasher, _hasher_pid = Hasher(), os.getpid()
        return _hasher


def cached(real_path: str, algorithm: str = "sha256") -> str | None:
    """The hash of the whole file at ``real_path`` if this process has it
    at hand (asked by HASH or an X-command, or filled by an upload), else
    None; never reads the file. ``algorithm``: ``sha256``, ``SHA-1``, ...;
    the value is lowercase hex."""
    return hasher().cached(real_path, algorithm)


def remember(st: os.stat_result, algorithm: str, value: str) -> None:
    """Cache ``value``, the hash ``algorithm`` of the whole file version ``st``."""
    hasher().remember(st, algorithm, value)


def stats() -> dict[str, int]:
    """This process' counters: cache hits and misses, bytes hashed, entries, jobs in progress."""
    current = hasher()
    return {"hits": current.cache.hits, "misses": current.cache.misses, "hashed_bytes": current.hashed_bytes,
            "entries": len(current.cache), "in_progress": current.in_progress}
