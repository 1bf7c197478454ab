"""The embedded ledger: one JSON file per tree, locked with ``flock``.

Rules that live here:

- The state of a tree lives in ``<tree>/.xxftp/ledger``, opened through
  ``beneath`` (no symbolic link on its path, the ledger itself included),
  as is every path the ledger looks at or changes when it settles. A
  ledger file not owned by the server's own user, or writable by others,
  is not trusted: it is never read, but removed and made anew (then
  rebuilt by a scan). The paths of a ledger's uploads must lie in its
  own tree (``quota.load``): settling acts on nothing else. Every operation
  reads, changes and writes it under an exclusive ``flock`` on that file,
  so threads and processes of one host see one order of events.
- The file is written in place, in one ``pwrite``: a shorter text is
  padded with spaces to the old length (JSON allows them), so a crash
  never leaves the end of an older text behind. Nothing is ``fsync``ed: after
  a power loss the ledger may be behind the disk, and ``xxftpd quota
  --rescan`` sets it right. An unreadable ledger (anything ``dump``
  did not write) is logged and rebuilt by a scan; the running uploads of
  this process are put back first, so the scan counts their files as they
  were when they began.
- Before any operation, what dead owners of this host left is settled:
  an intent whose path is gone is applied; an upload is rolled back or
  kept as its crash policy says, judged by the inode it wrote, never by a
  path alone (the path may name another file by now).
- A limited tree without a usage (new, rebuilt, or a limit just set) is
  scanned once; after that an upload costs a few ledger writes, whatever
  the number of files. An unlimited tree keeps no usage.
- The text last read or written is kept with its state: when the file
  still holds exactly that text, it is not parsed again.
- ``peek`` (the reports: ``users``, ``quota``) writes nothing, creates
  nothing and settles nothing: it reads the ledger under a shared lock,
  counts a dead owner's intent whose path is gone, shows dead owners' uploads as
  held until the server settles them, and scans a tree with no usage
  recorded (or an untrusted or unreadable ledger) without saving it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .. import beneath
from .. import quota as core
from ..config import CONFIG_DIR, ConfigStore
from ..quota import Intent, Pending, State, Usage
from . import HOST, alive_here, this_owner
from .scan import scan

log = logging.getLogger("xxftpd.quota")

_UNREAD = object()  # a limit not read yet
_READ = 65536  # ledger bytes per read (one read for any real ledger)
_IN_PLACE = ("truncate", "keep")  # crash policies of uploads that write the file itself


class FileLedger:
    """The ledger of one tree in ``<tree>/.xxftp/ledger``."""

    def __init__(self, root: str, store: ConfigStore) -> None:
        self.root = os.path.realpath(root)
        self.store = store
        self.dir = os.path.join(self.root, CONFIG_DIR)
        self.path = os.path.join(self.dir, "ledger")
        self._last: tuple[str, State] | None = None  # the text on disk and its state
        self._mine: dict[str, Pending] = {}  # this process's running uploads

    @property
    def limit(self) -> int | None:
        return self.store.size_limit(self.root)

    def exists(self) -> bool:
        return beneath.lexists(self.path)

    # --- the lock and the text

    def _open(self) -> int:
        for _ in range(3):
            try:
                fd = beneath.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # no .xxftp folder yet (but never a tree's folder: it may have moved)
                try:
                    beneath.mkdir(self.dir, 0o755)
                except FileExistsError:
                    pass
                fd = beneath.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            st = os.fstat(fd)
            if _written_by_us(st):
                return fd
            os.close(fd)  # another user wrote it: never read, replaced by our own
            log.warning("%s: ledger owned by uid %d or writable by others; not trusted, replaced and rebuilt "
                        "by a scan", self.path, st.st_uid)
            try:
                beneath.unlink(self.path)
            except FileNotFoundError:
                pass
        raise PermissionError(errno.EPERM, "the ledger keeps being replaced by another user", self.path)

    @contextmanager
    def _locked(self, limit: int | None | object = _UNREAD,
                fd: int | None = None) -> Iterator[tuple[State, Callable[[], None], int | None]]:
        """(state, save, limit) under the lock; changes are written back when
        the block ends (``save`` writes at once: intents, notes). ``fd``: the
        ledger already opened (this closes it)."""
        if fd is None:
            fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            limit = self.limit if limit is _UNREAD else limit
            state, text, size = self._load(fd, limit)
            self._last = None  # until this operation's state is on disk
            written = [text, size]

            def save() -> None:
                new = core.dump(state)
                if new.rstrip() != written[0].rstrip():
                    data = new.encode()
                    if len(data) < written[1]:  # pad: one write, never a torn or shortened text
                        data += b" " * (written[1] - len(data))
                    os.pwrite(fd, data, 0)
                    written[0], written[1] = data.decode(), len(data)

            try:
                yield state, save, limit
            finally:
                save()
                self._last = (written[0], state)
        finally:
            os.close(fd)  # releases the lock

    def _load(self, fd: int, limit: int | None) -> tuple[State, str, int]:
        """(state, its text, the file's size in bytes), settled and measured."""
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(fd, _READ, offset)
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) < _READ:  # a short read of a regular file: its end
                break
        text = b"".join(chunks).decode("utf-8", "replace")
        last = self._last
        if last is not None and last[0] == text and text:
            state = last[1]
        else:
            try:
                state = core.load(text, HOST, self.root)
            except core.Unreadable as err:
                log.warning("%s: unreadable ledger (%s); rebuilding it by a scan", self.path, err)
                state, text = State(), ""
            for token, entry in self._mine.items():  # ours survive a rebuild
                state.pending.setdefault(token, entry)
        self._settle(state)
        if limit != 0 and state.used is None:
            state.used = scan(self.root, self.store, began_at=_began(state))
            log.info("%s: usage scanned: %s", self.root, core.human(state.used))
        elif limit == 0 and state.used is not None:
            state.used = None  # not tracked from now on
        return state, text, offset

    def _settle(self, state: State) -> None:
        """Fold in what dead owners left behind."""
        for intent in list(state.intents):
            if not alive_here(intent.owner):
                state.intents.remove(intent)
                if not beneath.lexists(intent.gone):
                    state.add(intent.delta)
        for token, p in list(state.pending.items()):
            if not alive_here(p.owner):
                del state.pending[token]
                state.add(_recover(p))

    def _written(self, tries: int | None = None) -> State | None:
        """The state as last written, read under a shared lock, changing
        nothing. None: no ledger, one we may not read (untrusted,
        unreadable), or, with ``tries``, one still locked after that many
        tries (without, the read waits for the lock)."""
        try:  # O_NONBLOCK: a FIFO put in its place never blocks the reader
            fd = beneath.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not _written_by_us(st):
                return None
            if tries is None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                for attempt in range(tries):
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.01 * (attempt + 1))
                else:
                    return None
            text = os.pread(fd, max(st.st_size, _READ) + _READ, 0).decode("utf-8", "replace")
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            return core.load(text, HOST, self.root)
        except core.Unreadable:
            return None

    def glance(self, tries: int = 5) -> Usage | None:
        """The usage as last written, read without changing anything or
        waiting (``peek`` may wait for the lock and scan the disk): no
        file created, nothing settled or scanned (a dead owner's room still
        counts until the next operation settles it). For views that must
        never write a tree. None: no ledger, or one not to be read now
        (untrusted, unreadable, no usage yet, or locked ``tries`` times
        in a row, e.g. by a rescan)."""
        limit = self.limit
        state = self._written(tries)
        return None if state is None or state.used is None else state.usage(limit)

    # --- the operations

    def usage(self) -> Usage:
        limit = self.limit
        with self._locked(limit) as (state, _, _):
            return state.usage(limit)

    def peek(self) -> Usage:
        """The usage, changing nothing on the disk (for reports)."""
        limit = self.limit
        state = self._written()
        if state is None:  # no ledger yet (or none we may read): the scan below
            state = State()
        for intent in state.intents:  # as _settle would, but only in this copy
            if not alive_here(intent.owner) and not beneath.lexists(intent.gone):
                state.add(intent.delta)
        if limit != 0 and state.used is None:
            state.used = scan(self.root, self.store, began_at=_began(state))
        return state.usage(limit)

    def begin(self, token: str, entry: Pending, ahead: int) -> int:
        try:
            with self._locked() as (state, _, limit):
                if limit is None:
                    raise core.QuotaInvalid()
                hit = core.busy(state, core.writer_keys(entry.keys), alive_here, exclude=token)
                if hit is not None:
                    raise hit
                entry.since = entry.touched = time.time()
                self._mine[token] = entry
                return core.begin(state, limit, token, entry, ahead)
        except BaseException:
            self._mine.pop(token, None)  # never registered
            raise

    def reserve(self, token: str, needed: int, written: int, ahead: int) -> int:
        with self._locked() as (state, _, limit):
            self._restore(state, token)
            return core.reserve(state, limit, token, needed, written, ahead, time.time())

    def report(self, token: str, written: int, keep_ahead: bool) -> None:
        with self._locked() as (state, _, _):
            self._restore(state, token)
            core.report(state, token, written, keep_ahead, time.time())

    def commit(self, token: str, action: Callable[[_Commit], int]) -> Usage:
        with self._locked() as (state, save, limit):
            self._restore(state, token)
            delta = action(_Commit(state, save, limit, token))
            state.pending.pop(token, None)
            self._mine.pop(token, None)
            state.add(delta)
            return state.usage(limit)

    def abort(self, token: str) -> None:
        self._mine.pop(token, None)
        with self._locked() as (state, _, _):
            state.pending.pop(token, None)

    def change(self, delta: int, gone: str, action: Callable[[], None], *, check_fits: bool = False,
               keys: Iterable[str] = (), renamed: tuple[str, str] | None = None,
               measure: Callable[[], tuple[int, Iterable[str]]] | None = None) -> None:
        try:
            fd = self._open()
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or self.limit != 0:
                raise
            action()  # no ledger can be made here, so no upload runs here: nothing to check or charge
            return
        with self._locked(fd=fd) as (state, save, limit):
            if measure is not None:
                delta, keys = measure()
            hit = core.busy(state, keys, alive_here)
            if hit is not None:
                raise hit
            if check_fits:
                core.fits(state, limit, delta)
            if limit == 0:
                delta = 0  # an unlimited tree keeps no usage
            intent = None
            if delta:
                intent = Intent(this_owner(), delta, gone)
                state.intents.append(intent)
                save()
            try:
                action()
            finally:
                if intent is not None:
                    state.intents.remove(intent)
            if delta and not beneath.lexists(gone):
                state.add(delta)
            if renamed is not None:
                _follow(state, *renamed)

    def rescan(self, progress: Callable[[int], None] | None = None) -> int:
        """Rebuild the usage from the disk, keeping live reservations."""
        with self._locked() as (state, _, _):
            state.used = scan(self.root, self.store, progress, _began(state))
            return state.used

    def _restore(self, state: State, token: str) -> None:
        """Put back this process's upload if a rebuild dropped it."""
        if token not in state.pending and token in self._mine:
            state.pending[token] = self._mine[token]


class _Commit:
    """What an upload may do while it commits (the lock is held)."""

    def __init__(self, state: State, save: Callable[[], None], limit: int | None, token: str) -> None:
        self._state, self._save, self._limit, self._token = state, save, limit, token

    def note(self, target: str, temp: str | None = None, old: int | None = None) -> None:
        p = self._state.pending.get(self._token)
        if p is not None:
            p.target, p.temp = target, temp
            if old is not None:
                p.old = old
            self._save()

    def fits(self, delta: int) -> None:
        core.fits(self._state, self._limit, delta, exclude=self._token)

    def busy(self, keys: Iterable[str]) -> None:
        hit = core.busy(self._state, keys, alive_here, exclude=self._token)
        if hit is not None:
            raise hit


def _began(state: State) -> dict[str, int]:
    """file key -> size, of the files running uploads write in place."""
    return {key: p.old for p in state.pending.values() if p.crash in _IN_PLACE
            for key in p.keys if key.startswith("file:")}


def _follow(state: State, old: str, new: str) -> None:
    """Running uploads under the folder ``old`` now live under ``new``; an
    upload writing the file ``old`` itself (in place) follows it too. One
    that will commit to the name ``old`` keeps that name: it commits there."""
    prefix = old.rstrip("/") + "/"
    for p in state.pending.values():
        if p.target.startswith(prefix) or (p.target == old and p.crash in _IN_PLACE):
            p.target = new + p.target[len(old):]
        if p.temp and p.temp.startswith(prefix):
            p.temp = new + p.temp[len(old):]


def _written_by_us(st: os.stat_result) -> bool:
    """A ledger is read only if this server's user wrote it: a regular
    file of ours that nobody else may write."""
    return st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022


def _ours(path: str | None, ino: int) -> os.stat_result | None:
    """The stat of ``path`` if it is the file with inode ``ino``."""
    if not path:
        return None
    try:
        st = beneath.lstat(path)
    except OSError:
        return None
    return st if st.st_ino == ino else None


def _cut(path: str, ino: int, size: int) -> None:
    """Cut the file ``path`` back to ``size`` if it still is inode ``ino``
    (opened without following a link, checked on what was opened)."""
    fd = beneath.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_ino == ino and st.st_size > size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _recover(p: Pending) -> int:
    """Settle an upload whose owner died; returns the usage it adds."""
    try:
        target, temp = _ours(p.target, p.ino), _ours(p.temp, p.ino)
        if p.crash == "truncate":
            if target is not None:
                _cut(p.target, p.ino, p.old)
            return 0
        if p.crash == "keep":
            return target.st_size - p.old if target is not None else 0
        if target is not None:  # committed before its charge was written
            if temp is not None:  # a link + unlink cut in between: one file, two names
                beneath.unlink(p.temp)
            return target.st_size - p.old
        if temp is not None:  # a named temporary, never committed
            if p.crash == "keep-new" and not beneath.lexists(p.target):  # an earlier version's resumable upload
                beneath.rename(p.temp, p.target)
                return temp.st_size
            beneath.unlink(p.temp)
        return 0
    except OSError as err:
        log.warning("recovering the upload of %s: %s", p.target, err.strerror)
    return 0


__all__ = ["FileLedger"]
