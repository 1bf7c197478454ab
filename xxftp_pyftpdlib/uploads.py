"""A file being received: where its bytes go, what they cost, how it ends.

Rules that live here:

- A file with several names (hard links) is never written in place: its
  other names, in this tree or another, would change uncounted. It can
  be replaced (an atomic STOR), which changes this name only.
- An upload is bound to what it opened, never to a path read later: the
  folder it commits into (a descriptor, opened through ``beneath`` so a
  link swapped in on its path meets an error; renaming that folder or any
  folder above it later changes nothing) and the file it writes (a descriptor:
  its size, its rollback and its charge come from ``fstat``/``ftruncate``
  of that descriptor).
- Where the bytes go, by the upload mode (``MODES``, one row each):
  a *temporary* is an unnamed file in the target's folder (``O_TMPFILE``;
  a hidden ``.xxftpd-<token>.part`` where the filesystem has no unnamed
  files), linked under the target's name only when the transfer
  succeeds; *in place* writes the target itself. APPE and REST+STOR on an
  existing file are always in place.
- A new file is committed without replacing anything: if the name
  appeared meanwhile, the upload becomes an overwrite at that moment and
  needs what an overwrite needs then (the permission given at open, a
  file not being written by another upload, room for its growth), else
  it is refused and the other file is untouched. An overwrite replaces
  the target in one rename.
- On failure a temporary is dropped; an in-place upload is cut back to
  the length it began with (it is the file's only writer, so only its own
  bytes go), or removed if it created the file; unless the mode keeps
  what arrived. Every outcome is charged as growth: the committed size
  minus the size it replaced. While it runs, a temporary holds room for
  all its bytes, since the file it replaces is still on the disk.
- Room is reserved before each write (``ledger.reserve``), so a write
  that would pass the limit never reaches the disk; an idle upload gives
  its room ahead back when its data channel says so (``idle``).
- The upload registers with its tree's ledger when it opens, naming the
  file it writes or replaces, the name it commits to and the folder it
  commits into: a second writer is refused there (``quota.Busy``).

What this module must not know: FTP replies, sockets, pyftpdlib.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat as stat_mod
from dataclasses import dataclass, replace
from typing import Callable

from . import beneath, quota
from .ledger import Commit, Ledger, new_token, this_owner
from .quota import GRANT, Busy, Pending, QuotaWait, file_key, folder_key, name_key, temp_name

_SPLICE = hasattr(os, "splice")  # Linux, Python 3.10+
_NO_SPLICE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}  # the target can't be spliced into
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}  # no unnamed files here
_O_TMPFILE = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0  # linked through /proc

# Why a transfer ended without success
QUOTA, BROKEN, ERROR = "quota", "broken", "error"


@dataclass(frozen=True)
class Mode:
    """How one upload mode treats a file (see the README's upload modes)."""

    stor_in_place: bool  # STOR writes the target itself, truncating it at once
    new_in_place: bool  # a new file is written under its own name (so a break leaves it resumable)
    keep_when_broken: bool  # a broken connection keeps what arrived
    keep_when_refused: bool  # a quota refusal or a local error keeps what arrived


MODES: dict[str, Mode] = {
    "atomic": Mode(stor_in_place=False, new_in_place=False, keep_when_broken=False, keep_when_refused=False),
    "atomic-resume": Mode(stor_in_place=False, new_in_place=True, keep_when_broken=True, keep_when_refused=False),
    "standard": Mode(stor_in_place=True, new_in_place=True, keep_when_broken=True, keep_when_refused=True),
}


class Refused(Exception):
    """The upload can't be committed as it stands (FTP 550); says why."""


class Upload:
    """A file-like object pyftpdlib's data channel writes into."""

    _rest = False  # a REST position was set (seek before the first byte)
    _truncate = False  # a STOR in place, which empties the file it writes

    def __init__(self, target: str, name: str, mode: str, upload_mode: str, ledger: Ledger,
                 placeholder: bool = False, overwrite_refusal: str | None = None,
                 tree_of: Callable[[str], Ledger] | None = None) -> None:
        """``target``: the real path; ``name``: what pyftpdlib logs; ``mode``: 'wb',
        'ab' or 'r+b' (REST). ``placeholder``: ``target`` is an empty file made
        only to hold a unique name (STOU), removed if the upload fails.
        ``overwrite_refusal``: why this user may not replace an existing file
        (None: they may), for a name that appears while the upload runs.
        ``tree_of``: the ledger governing a folder now (a size file may be
        added, or the folder moved, while the upload runs); asked again at
        each reservation and at the end.

        Raises Busy if another upload writes the file, FileNotFoundError for a
        REST on a missing file, OSError for what the disk refuses.
        """
        self.name = name  # what pyftpdlib logs and passes to callbacks
        self.target = target
        self.ledger = ledger
        self._tree_of = tree_of
        self.upload_mode = upload_mode
        self._mode = MODES[upload_mode]
        self.token = new_token()
        self.closed = True  # until fully open
        self._overwrite_refusal = overwrite_refusal
        self._append = mode.startswith("a")
        self._written = 0
        self._start = 0
        self._spliceable = _SPLICE
        self._held = b""  # a chunk waiting for room (QuotaWait)
        self._usage: quota.Usage | None = None
        self._created = False  # this upload made the file it writes in place
        self._temp_name: str | None = None  # a named temporary (no O_TMPFILE here)
        self._file: io.FileIO | None = None
        self.committed: tuple[str, int] | None = None  # (real path, size) once a whole transfer is in place
        folder, self._base = os.path.split(target)
        self._dir = beneath.open_folder(folder)
        try:
            self._open(mode, placeholder)
        except BaseException:
            self._close_fds()
            raise
        self.closed = False

    def _open(self, mode: str, placeholder: bool) -> None:
        dir_st = os.fstat(self._dir)
        try:
            st = os.lstat(self._base, dir_fd=self._dir)
            existing = st if stat_mod.S_ISREG(st.st_mode) else None
        except FileNotFoundError:
            existing = None
        self._placeholder = existing.st_ino if placeholder and existing is not None else None
        if mode.startswith("r") and existing is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", self.target)
        if existing is None or placeholder:
            in_place = self._mode.new_in_place
        else:
            in_place = mode[0] in "ar" or self._mode.stor_in_place
        self.old = existing.st_size if existing is not None and not placeholder else 0
        if in_place and existing is not None and existing.st_nlink > 1:
            # its other names (in this tree or another) would grow too, uncounted
            raise Refused(f"{self._base} has other names (hard links): it can't be written in place; "
                          "store it under a new name")
        if in_place:
            self._open_in_place(mode, existing)
            self.temp = None
            crash = "keep" if self._mode.keep_when_broken else "truncate"
        else:
            if existing is not None:  # a file another upload writes in place can't be replaced now
                _probe(self._base, self._dir)
            self._open_temporary()
            self.temp = os.path.join(os.path.dirname(self.target), self._temp_name) if self._temp_name else None
            crash = "delete"
        self._in_place = in_place
        self._start = self.old if self._append and in_place else 0
        fst = os.fstat(self._file.fileno())
        # The file an overwrite will replace is not claimed: it may be renamed
        # away meanwhile, and what the name holds at the commit is checked then.
        keys = [name_key(dir_st.st_dev, dir_st.st_ino, self._base), folder_key(dir_st.st_dev, dir_st.st_ino),
                file_key(fst.st_dev, fst.st_ino)]
        entry = Pending(this_owner(), crash, self.target, self.old, fst.st_ino, self.temp, tuple(dict.fromkeys(keys)))
        self._entry = entry
        try:
            self._granted = self.ledger.begin(self.token, entry, GRANT)
        except BaseException:
            self._undo_open()
            raise
        if self._truncate:  # only the file's one writer may cut it
            try:
                os.ftruncate(self._file.fileno(), 0)
            except BaseException:
                self.ledger.abort(self.token)
                self._undo_open()
                raise

    def _open_in_place(self, mode: str, existing: os.stat_result | None) -> None:
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        if existing is None:
            flags |= os.O_WRONLY | os.O_CREAT | os.O_EXCL
            self._created = True
        elif mode.startswith("a"):
            flags |= os.O_WRONLY | os.O_APPEND
        elif mode.startswith("r"):
            flags |= os.O_RDWR
        elif self._placeholder is not None:
            flags |= os.O_WRONLY
            self._created = True
        else:  # STOR in place: truncated at once, once registered (see _open)
            flags |= os.O_WRONLY
            self._truncate = True
        fd = os.open(self._base, flags, 0o666, dir_fd=self._dir)
        self._file = io.FileIO(fd, "ab" if self._append else "wb", closefd=True)
        _claim(fd)

    def _open_temporary(self) -> None:
        if _O_TMPFILE:
            try:
                fd = os.open(".", _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=self._dir)
                self._file = io.FileIO(fd, "wb", closefd=True)
                return
            except OSError as err:
                if err.errno not in _NO_TMPFILE:
                    raise
        self._temp_name = temp_name(self.token)
        fd = os.open(self._temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=self._dir)
        self._file = io.FileIO(fd, "wb", closefd=True)

    def _undo_open(self) -> None:
        """The upload could not register: leave nothing of it behind (but a
        file it created that another upload took meanwhile is that one's)."""
        if self._created and self._placeholder is None:
            st = os.fstat(self._file.fileno())
            try:
                self.ledger.change(0, self.target, self._remove_own, keys=[file_key(st.st_dev, st.st_ino)])
            except (Busy, OSError):
                pass
        if self._temp_name:
            self._unlink(self._temp_name)
        self._close_fds()

    # --- what pyftpdlib calls

    def write(self, data: bytes) -> int:
        size = len(data)
        try:
            self._make_room(size)
        except QuotaWait:
            self._held = bytes(data)
            raise
        self._write_all(data)
        self._written += size
        return size

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:  # unbuffered: a short write is possible
            view = view[self._file.write(view):]

    @property
    def can_splice(self) -> bool:
        """True if ``write_from_pipe`` may be used (Linux can't splice into O_APPEND)."""
        return self._spliceable and not (self._append and self._in_place)

    def write_from_pipe(self, pipe: int, size: int) -> int:
        """Write the ``size`` bytes waiting in ``pipe`` (moved there from the
        socket by ``os.splice``) without copying them through user memory.

        The pipe is always left empty: on QuotaWait its bytes are held like
        a refused ``write``'s, on any other failure they are dropped.
        """
        try:
            self._make_room(size)
        except QuotaWait:
            self._held = _read_exactly(pipe, size)
            raise
        except BaseException:
            _read_exactly(pipe, size)
            raise
        left = size
        try:
            while left:
                left -= os.splice(pipe, self._file.fileno(), left)
        except OSError as err:
            if err.errno not in _NO_SPLICE:
                raise
            self._spliceable = False  # a filesystem without splice: copy, from now on
            data = _read_exactly(pipe, left)
            left = 0
            self._write_all(data)
        finally:
            if left:  # a write error: the rest must not reach the next upload
                _read_exactly(pipe, left)
        self._written += size
        return size

    def _growth(self, written: int) -> int:
        """The room this upload takes once ``written`` bytes are in: all of a
        temporary (the file it replaces stays until the commit, which then
        charges only the difference); what an in-place upload adds."""
        if not self._in_place:
            return written
        if self._rest:  # REST + STOR writes over the file from a position
            return max(self.old, self._start + written) - self.old
        return self._start + written - self.old

    def _make_room(self, size: int) -> None:
        """Reserve room for ``size`` more bytes, if this upload's grant is used up."""
        need = self._growth(self._written + size)
        if need > self._granted:  # ahead by what was written so far: few ledger updates for big files
            self._follow_tree()
            self._granted = self.ledger.reserve(self.token, need, max(0, self._growth(self._written)),
                                                max(GRANT, self._written))

    def _follow_tree(self) -> None:
        """Move to the ledger that governs the upload's folder now, if that
        changed (a size file added or removed, the folder moved into
        another tree): registered there first, then gone from the old."""
        if self._tree_of is None:
            return
        here = _path_of(self._dir)
        if here is None:
            return
        ledger = self._tree_of(here)
        if ledger is self.ledger or ledger.root == self.ledger.root:
            return
        entry = replace(self._entry, target=f"{here}/{self._base}", bytes=0, written=0)
        ledger.begin(self.token, entry, 0)
        old, self.ledger, self._granted, self._entry = self.ledger, ledger, 0, entry
        try:
            old.abort(self.token)
        except OSError:  # its folder is gone (moved): nothing of this upload is left there
            pass

    def idle(self) -> None:
        """No bytes came for a lease's time: give back the room ahead."""
        if self.closed or self._held:
            return
        growth = max(0, self._growth(self._written))
        if self._granted > growth:
            self.ledger.report(self.token, growth, keep_ahead=False)
            self._granted = growth

    def resume(self) -> None:
        """Write the chunk held back by QuotaWait (which may be raised again)."""
        held, self._held = self._held, b""
        if held:
            self.write(held)

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._file.seek(offset, whence)
        if not self._append:
            self._start, self._rest = position, True
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Closed without a verdict (a handler that doesn't call finish): keep."""
        if not self.closed:
            self.finish(True)

    # --- the end

    def finish(self, ok: bool, why: str = ERROR) -> str:
        """Commit or roll back; returns a note for the reply ("" if none).

        Raises OSError, QuotaExceeded, Busy or Refused if a successful
        transfer can't be committed (then nothing changed and nothing of
        it is left).
        """
        if self.closed:
            return ""
        self.closed = True
        mode = self._mode
        keep = ok or (mode.keep_when_broken if why == BROKEN else mode.keep_when_refused)
        committed = False
        try:
            if keep:
                self._follow_tree()
            if keep and self._in_place:
                self._usage = self.ledger.commit(self.token, self._settle_in_place)
                committed = True
            elif ok:  # a temporary: only a whole transfer replaces anything
                self._usage = self.ledger.commit(self.token, self._link)
                committed = True
            if committed and ok:
                self.committed = (f"{self._folder_now()}/{self._base}", os.fstat(self._file.fileno()).st_size)
        finally:
            if not committed:
                self._roll_back()
            self._close_fds()
        return quota.free_text(self._usage) if ok and self._usage is not None and self._usage.limit else ""

    def _folder_now(self) -> str:
        """The path of the folder it commits into, now (it may have moved)."""
        return _path_of(self._dir) or os.path.dirname(self.target)

    def _settle_in_place(self, tx: Commit) -> int:
        st = os.fstat(self._file.fileno())
        return st.st_size - self.old if st.st_nlink else -self.old

    def _link(self, tx: Commit) -> int:
        """Give the temporary the target's name: never over a file the checks did not see.

        Each way charges the growth it really makes (the new size minus
        what it replaces now), checked against the room left: the file
        this upload began to replace may have been renamed away meanwhile.
        """
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        here = self._folder_now()
        target = f"{here}/{self._base}"
        for _ in range(2):  # a name that vanishes between the two tries is taken as new once more
            if self._placeholder is None and not _exists(self._base, self._dir):
                tx.fits(size)
                if self.old or target != self.target:  # what the ledger holds may be stale
                    tx.note(target, None, 0)
                if _link_new(fd, self._temp_name, self._base, self._dir):
                    self._temp_name = None
                    return size
            try:
                st = os.lstat(self._base, dir_fd=self._dir)
                break
            except FileNotFoundError:
                continue
        else:
            raise Refused(f"{self._base}: the name keeps changing; try again")
        # the name is taken: an overwrite, judged now
        ours = st.st_ino == self._placeholder and st.st_size == 0
        if stat_mod.S_ISDIR(st.st_mode):
            raise Refused(f"{self._base}: a folder of that name appeared meanwhile")
        if not ours and self._overwrite_refusal is not None:
            raise Refused(f"a file of that name appeared meanwhile; {self._overwrite_refusal}")
        tx.busy([file_key(st.st_dev, st.st_ino)])  # an upload writing it in place
        old = st.st_size if stat_mod.S_ISREG(st.st_mode) else 0
        tx.fits(size - old)
        if self._temp_name is None:  # an unnamed temporary: give it a hidden name first
            self._temp_name = temp_name(self.token)
            tx.note(target, f"{here}/{self._temp_name}", old)
            os.link(f"/proc/self/fd/{fd}", self._temp_name, dst_dir_fd=self._dir, follow_symlinks=True)
        else:
            tx.note(target, f"{here}/{self._temp_name}", old)
        os.rename(self._temp_name, self._base, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        self._temp_name = None
        return size - old

    def _roll_back(self) -> None:
        """Leave the tree as it was before this upload (its own bytes only)."""
        try:
            if self._in_place and not self._created:
                os.ftruncate(self._file.fileno(), self.old)
            elif self._created or self._placeholder is not None:
                self._remove_own()
            if self._temp_name:
                self._unlink(self._temp_name)
        except OSError:
            pass
        try:
            self.ledger.abort(self.token)
        except OSError:
            pass

    def _remove_own(self) -> None:
        """Remove the file this upload created, wherever it is now, if it is still ours."""
        try:
            if not self._in_place:  # a STOU placeholder, still empty
                st = os.lstat(self._base, dir_fd=self._dir)
                if st.st_ino == self._placeholder and st.st_size == 0:
                    os.unlink(self._base, dir_fd=self._dir)
                return
            fd = self._file.fileno()
            path = os.readlink(f"/proc/self/fd/{fd}")
            if beneath.lstat(path).st_ino == os.fstat(fd).st_ino:
                beneath.unlink(path)
        except (OSError, ValueError):
            pass

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir)
        except OSError:
            pass

    def _close_fds(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1

    def __del__(self) -> None:
        # Dropped without a verdict (the session vanished first): roll back.
        if not getattr(self, "closed", True):
            try:
                self.finish(False, BROKEN)
            except Exception:
                pass


def _claim(fd: int) -> None:
    """Lock a file this upload writes in place (``flock``, held while its
    descriptor is open): a second guard beside the ledger's keys, which
    holds for any route to the file. Busy if another upload holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy("file") from None


def _probe(name: str, folder: int) -> None:
    """Busy if an upload writes the file ``name`` in place now (it holds the
    file's lock). Only a probe: the commit checks again under the ledger."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return
    try:
        _claim(fd)
    finally:
        os.close(fd)  # releases the lock


def _path_of(fd: int) -> str | None:
    """Where an open folder is now (None if that can't be told)."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return path if path.startswith("/") and not path.endswith(" (deleted)") else None


def _exists(name: str, folder: int) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


def _link_new(fd: int, temp: str | None, name: str, folder: int) -> bool:
    """Give the upload's file ``name`` in ``folder`` unless that name exists.

    An unnamed temporary is linked (``linkat`` never replaces); a named one
    is renamed with RENAME_NOREPLACE, or linked and unlinked where the
    kernel or filesystem lacks it. False if the name is taken.
    """
    try:
        if temp is None:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
        elif not _rename_noreplace(folder, temp, name):
            try:
                os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                # no hard links here: the caller holds the ledger lock and saw no such name
                os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
                return True
            os.unlink(temp, dir_fd=folder)
    except FileExistsError:
        return False
    return True


def _rename_noreplace(folder: int, old: str, new: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False where unavailable. FileExistsError if ``new`` exists."""
    libc = _libc()
    if libc is None:
        return False
    if libc.renameat2(folder, os.fsencode(old), folder, os.fsencode(new), 1) == 0:
        return True
    import ctypes
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), new)
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), new)


_LIBC: list = []


def _libc():
    if not _LIBC:
        import ctypes
        import ctypes.util
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.renameat2  # glibc 2.28+
        except (OSError, AttributeError):
            libc = None
        _LIBC.append(libc)
    return _LIBC[0]


def _read_exactly(fd: int, size: int) -> bytes:
    """Read ``size`` bytes that are known to be waiting in a pipe."""
    parts = []
    while size > 0:
        try:
            part = os.read(fd, size)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


__all__ = ["Upload", "Mode", "MODES", "Refused", "QUOTA", "BROKEN", "ERROR"]
