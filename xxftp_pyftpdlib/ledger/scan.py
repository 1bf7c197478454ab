"""Measuring a tree on the disk: what a rescan counts, and what a move carries.

Rules that live here:

- A tree is read through descriptors: its top opened through ``beneath``
  (no link on its path), each folder below relative to its parent's
  descriptor without following a link.
- A tree's usage is the total size of its regular files; ``.xxftp/``,
  upload temporaries and the folders inside it that have a size file of
  their own (trees of their own) are left out, and symlinks are not
  followed. Mounts play no part: the scan counts what is on the disk,
  whichever homes or mounts reach it.
- A file that a running upload is writing in place counts with the size
  it had when that upload began: its new bytes are the upload's, held in
  its reservation and charged when it commits, never twice.
- A folder about to move to another tree is measured together with the
  identity keys of everything in it, so a move that would carry a file
  (or the folder) of a running upload along can be refused.

What this module must not know: ledgers' storage, locks, FTP.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod
from typing import Callable

from .. import beneath
from ..config import CONFIG_DIR, ConfigStore
from ..quota import file_key, folder_key, is_temp_name

log = logging.getLogger("xxftpd.quota")


def scan(root: str, store: ConfigStore, progress: Callable[[int], None] | None = None,
         began_at: dict[str, int] | None = None) -> int:
    """Total size of the tree's files, by the rules above.

    ``began_at``: file key -> size, for files running uploads write in place.
    """
    return measure(root, store, progress, began_at)[0]


def measure(root: str, store: ConfigStore, progress: Callable[[int], None] | None = None,
            began_at: dict[str, int] | None = None, keys: set[str] | None = None) -> tuple[int, set[str]]:
    """(size, keys): the scan of ``root``; ``keys`` collects the file and
    folder keys of everything counted (for a move), if given.

    The walk opens each folder relative to its parent's descriptor, so
    paths of any length are counted (a folder renamed to a long name can
    push the paths below it past PATH_MAX, where a walk by path fails).
    """
    root = os.path.realpath(root)
    used = 0
    seen = 0
    collect = keys is not None
    found: set[str] = keys if keys is not None else set()
    # (the open parent folder, or None for the root; name; path): a parent's
    # descriptor stays open until its last subfolder is opened, so about
    # one descriptor per level is open, however wide the tree
    stack: list[tuple[_Open | None, str, str]] = [(None, root, root)]
    try:
        while stack:
            parent, name, folder = stack.pop()
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd) if parent else beneath.open_folder(name, listable=True)
            except OSError as err:
                log.warning("%s: cannot scan: %s", folder, err.strerror)
                continue
            finally:
                if parent is not None:
                    parent.done_one()
            subfolders: list[str] = []
            try:
                if collect and parent is None:
                    st = os.fstat(fd)
                    found.add(folder_key(st.st_dev, st.st_ino))
                if parent is not None and _own_tree(fd):
                    os.close(fd)  # a tree of its own
                    continue
                total = 0
                with os.scandir(fd) as it:
                    for entry in it:
                        name = entry.name
                        if name == CONFIG_DIR or is_temp_name(name):
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat_mod.S_ISDIR(st.st_mode):
                            subfolders.append(name)
                            if collect:
                                found.add(folder_key(st.st_dev, st.st_ino))
                        elif stat_mod.S_ISREG(st.st_mode):
                            size = st.st_size
                            if began_at or collect:
                                key = file_key(st.st_dev, st.st_ino)
                                if began_at and key in began_at:
                                    size = began_at[key]
                                if collect:
                                    found.add(key)
                            total += size
                        seen += 1
                        if progress is not None and seen % 1000 == 0:
                            progress(seen)
                used += total
            except OSError as err:
                log.warning("%s: cannot scan: %s", folder, err.strerror)
                subfolders = []
            if subfolders:
                opened = _Open(fd, len(subfolders))
                stack.extend((opened, sub, f"{folder}/{sub}") for sub in subfolders)
            else:
                os.close(fd)
    finally:
        for parent in {id(p): p for p, _, _ in stack if p is not None}.values():  # an error left some open
            parent.close()
    return used, found


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _own_tree(fd: int) -> bool:
    """True if the open folder ``fd`` holds a size file (as ``ConfigStore.has_size``:
    an entry of any kind, in a ``.xxftp`` that is no link)."""
    try:
        config = os.open(CONFIG_DIR, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return False
    try:
        os.stat("size", dir_fd=config, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(config)


class _Open:
    """A folder's descriptor, open while subfolders of it wait to be opened."""

    __slots__ = ("fd", "pending")

    def __init__(self, fd: int, pending: int) -> None:
        self.fd, self.pending = fd, pending

    def done_one(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def entry_keys(path: str) -> tuple[int, list[str]]:
    """(size, keys) of one path that is about to change: a file's size and
    key, or a folder's key (no size: folders are measured when they move)."""
    try:
        st = beneath.lstat(path)
    except OSError:
        return 0, []
    if stat_mod.S_ISREG(st.st_mode):
        return st.st_size, [file_key(st.st_dev, st.st_ino)]
    if stat_mod.S_ISDIR(st.st_mode):
        return 0, [folder_key(st.st_dev, st.st_ino)]
    return 0, []


__all__ = ["scan", "measure", "entry_keys"]
