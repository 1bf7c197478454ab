"""A path checked is a path used: acting on real paths that may not change under us.

Rules that live here:

- A *checked path* is absolute, normalised and had no symbolic link in
  any component when it was checked (a ``realpath``, or a real folder
  joined with names that were no links).
- Using it opens its folder with ``openat2(RESOLVE_NO_SYMLINKS)``, one
  system call for the whole path; where the kernel has no ``openat2``
  (older than 5.6, or not Linux), by a walk from ``/`` opening each
  component with ``O_PATH | O_DIRECTORY | O_NOFOLLOW``. A component that
  became a symbolic link since the check fails with ``ELOOP``, so an
  operation meets an error, never what the link leads to.
- The last component is acted on relative to that folder and never
  followed: opened with ``O_NOFOLLOW``, stat'ed, created, removed,
  renamed, its time set without following a link; its mode is set
  through an ``O_PATH`` descriptor of the entry itself (``fchmodat``
  can't refuse to follow a link on Linux).
- A folder to be listed is opened the same way (``open_folder``); a
  listing reads it through that descriptor (``os.scandir(fd)``), and its
  entries are stat'ed relative to it, so the descriptor must stay open as
  long as they are used.

What this module must not know: FTP, homes, areas, hidden names, quota.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat as stat_mod
import sys
from contextlib import contextmanager
from typing import Iterator

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE = _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # the same number on every Linux architecture of the unified table
_AT_FDCWD = -100
_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC
_FOLDER_FLAGS = _PATH_FLAGS | os.O_DIRECTORY
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROC_FD = os.path.isdir("/proc/self/fd")

SWAPPED = "a folder or file on the path became a symbolic link while in use; refused"


class Swapped(OSError):
    """A component of a checked path is a symbolic link now (ELOOP)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2():
    """The ``openat2`` system call as a function, or None where it can't be used."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64", "i686", "armv7l", "riscv64",
                                                              "ppc64le", "s390x"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    call.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    how = _OpenHow(_FOLDER_FLAGS, 0, _RESOLVE)
    fd = call(_SYS_OPENAT2, _AT_FDCWD, b"/", ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:  # ENOSYS (old kernel), EPERM (a seccomp filter that doesn't know it)
        return None
    os.close(fd)
    return call


_openat2 = _load_openat2()


def _swapped(path: str) -> Swapped:
    return Swapped(errno.ELOOP, SWAPPED, path)


def _open_path(path: str, flags: int, mode: int = 0) -> int:
    """``open(path, flags)`` following no symbolic link anywhere on ``path``."""
    if _openat2 is not None:
        if not flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)):
            mode = 0  # openat2 refuses a mode it would not use
        how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
        fd = _openat2(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.ELOOP:
            raise _swapped(path)
        raise OSError(err, os.strerror(err), path)
    return _walk_open(path, flags, mode)


def _walk_open(path: str, flags: int, mode: int) -> int:
    """``_open_path`` without ``openat2``: one component at a time from ``/``."""
    if not path.startswith("/"):
        raise OSError(errno.EINVAL, "not an absolute path", path)
    names = [name for name in path.split("/") if name]
    folder = os.open("/", _FOLDER_FLAGS)
    try:
        for name in names[:-1]:
            try:
                inner = os.open(name, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as err:
                raise _swapped(path) if err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, folder) \
                    else OSError(err.errno, err.strerror, path) from None
            os.close(folder)
            folder = inner
            if stat_mod.S_ISLNK(os.fstat(folder).st_mode):  # O_PATH | O_NOFOLLOW opens a link itself
                raise _swapped(path)
        if not names:
            return os.open("/", flags | os.O_CLOEXEC)
        last = names[-1]
        try:
            fd = os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder)
        except OSError as err:
            if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and _is_link(last, folder)):
                raise _swapped(path) from None
            raise OSError(err.errno, err.strerror, path) from None
        if flags & _PATH_FLAGS == _PATH_FLAGS and stat_mod.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)  # O_PATH | O_NOFOLLOW opened the link itself
            raise _swapped(path)
        return fd
    finally:
        os.close(folder)


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat_mod.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _split(path: str) -> tuple[str, str]:
    folder, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "no entry to act on", path)
    return folder or "/", name


@contextmanager
def parent(path: str) -> Iterator[tuple[int, str]]:
    """(descriptor of the folder holding ``path``, last component), the folder
    opened as checked; closed when the block ends."""
    folder, name = _split(path)
    fd = _open_path(folder, _FOLDER_FLAGS)
    try:
        yield fd, name
    finally:
        os.close(fd)


# --- what the server does with a checked path


def open(path: str, flags: int, mode: int = 0o666) -> int:  # noqa: A001 (the module's own open)
    """A descriptor of ``path`` opened with ``flags``; no link followed anywhere."""
    return _open_path(path, flags, mode)


def opener(path: str, flags: int) -> int:
    """For ``builtins.open(path, mode, opener=beneath.opener)``: a file object
    whose ``name`` is the path and whose descriptor was opened as checked."""
    return _open_path(path, flags, 0o666)


def open_folder(path: str, listable: bool = False) -> int:
    """A folder's descriptor (``O_PATH``; ``listable``: readable, for
    ``os.scandir(fd)``). The caller closes it."""
    return _open_path(path, _LIST_FLAGS if listable else _FOLDER_FLAGS)


def lstat(path: str) -> os.stat_result:
    """The stat of the entry ``path`` itself; ELOOP if any component is a link."""
    fd = _open_path(path, _PATH_FLAGS)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def lexists(path: str) -> bool:
    """True if ``path`` names an entry (a link there counts: it is an entry)."""
    try:
        lstat(path)
    except OSError as err:
        if err.errno != errno.ELOOP:
            return False
        try:
            with parent(path) as (fd, name):
                os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
    return True


def unlink(path: str) -> None:
    with parent(path) as (fd, name):
        os.unlink(name, dir_fd=fd)


def rmdir(path: str) -> None:
    with parent(path) as (fd, name):
        os.rmdir(name, dir_fd=fd)


def mkdir(path: str, mode: int = 0o777) -> None:
    with parent(path) as (fd, name):
        os.mkdir(name, mode, dir_fd=fd)


def rename(old: str, new: str) -> None:
    """Rename ``old`` to ``new`` (replacing a file there, as ``rename(2)``)."""
    with parent(old) as (old_fd, old_name), parent(new) as (new_fd, new_name):
        os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)


def utime(path: str, times: tuple[float, float]) -> None:
    with parent(path) as (fd, name):
        os.utime(name, times, dir_fd=fd, follow_symlinks=False)


def chmod(path: str, mode: int) -> None:
    """Set the mode of the entry ``path`` (never of what a link leads to)."""
    if _PROC_FD and hasattr(os, "O_PATH"):
        fd = _open_path(path, _PATH_FLAGS)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)  # the entry the O_PATH descriptor holds
        finally:
            os.close(fd)
        return
    fd = _open_path(path, os.O_RDONLY | os.O_NONBLOCK)  # no /proc: the entry must be readable
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def uses_openat2() -> bool:
    """True if paths are opened with ``openat2`` (else by the walk)."""
    return _openat2 is not None


__all__ = ["SWAPPED", "Swapped", "open", "opener", "open_folder", "parent", "lstat", "lexists", "unlink", "rmdir",
           "mkdir", "rename", "utime", "chmod", "uses_openat2"]
