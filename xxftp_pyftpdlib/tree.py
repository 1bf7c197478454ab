"""A user's view of the server tree: FTP paths resolved to real paths.

Rules that live here:

- An FTP path is resolved against the user's home one component at a
  time. ``.`` and ``..`` are navigation, resolved on the FTP path itself
  and never above ``/``; empty components are ignored.
- A component that starts with ``.`` is a hidden name (``.xxftp`` holds
  the configuration): it is refused wherever it sits in the path, and
  left out of every listing. Names with NUL, CR or LF are refused too.
- At each folder, the mounts declared in its ``.xxftp/virtual`` come
  first: a mount hides a real entry of the same name, and crossing it
  moves into the mount's target, which becomes a new *area* with the
  mount's own permission (no inheritance from the folder it sits in).
- Symlinks are followed only where they stay inside the area they sit in
  (the home, or the target of the mount being walked); anything else is
  refused, so nothing outside the home and its reachable mount targets
  can be reached.
- Hidden means hidden however it is reached: a symlink whose real path
  has a dot name in any component below its area's root (``settings ->
  .xxftp``, ``quota.txt -> .xxftp/size``) is refused and left out of
  listings like one that leaves its area; a mount whose target's real
  path has a dot name (below the server root for a target inside it,
  anywhere for one outside) is refused and reported once, like a missing
  target.
- What resolution returns is a *checked path* (no link in any component);
  operations use it through ``beneath``, so a link swapped in after the
  check meets an error there.
- Loops: a step may never arrive at a folder that is already on the walked
  path, nor at one of that path's ancestors (a mount of ``$root/alice``
  inside alice's home, a symlink to a parent, two mounts pointing at each
  other). Such a mount or link is refused and left out of listings, so
  every FTP path, listing and scan stays finite.
- The top of the home and every mount point can't be deleted, renamed,
  overwritten or re-created, whatever the permission.
"""

from __future__ import annotations

import functools
import os
import stat as stat_mod
import weakref
from dataclasses import dataclass
from typing import Iterator, Protocol

from . import beneath
from .config import ConfigStore, Mount
from .permissions import Action, Permission


class PathRefused(Exception):
    """The path can't be used; the message says why, for the client."""


class PermissionRefused(PathRefused):
    """The path is fine but its area's permission doesn't allow the action."""


@dataclass(frozen=True)
class Area:
    """A tree with one permission (and one quota): the home or a mount target."""

    root: str  # real, canonical folder at the top of the area
    top: str  # FTP path where the area appears
    permission: Permission
    mount: Mount | None  # None for the home


@dataclass(frozen=True)
class Node:
    """One resolved FTP path."""

    ftp: str  # normalised FTP path, "/" for the home
    real: str  # real path; symlinks inside the area already resolved
    area: Area
    is_top: bool  # the home or a mount point
    trail: tuple[str, ...]  # real folders walked from the home to here


class Entry:
    """A resolved listing entry (a kept link, a mount point, a single file):
    its name, area and stat."""

    __slots__ = ("name", "area", "is_top", "st")

    def __init__(self, name: str, area: Area, is_top: bool, st: os.stat_result) -> None:
        self.name, self.area, self.is_top, self.st = name, area, is_top, st


def split_ftp_path(path: str) -> list[str]:
    """Components of an FTP path after ``.``/``..`` navigation, never above /."""
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return parts


def check_name(name: str) -> None:
    """Refuse hidden names and names no FTP client could mean."""
    if name.startswith("."):
        raise PathRefused(f"{name!r}: names starting with '.' are hidden")
    if "\n" in name or "\r" in name or "\x00" in name:
        raise PathRefused(f"{name!r}: invalid character in name")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def hidden_below(real: str, folder: str) -> bool:
    """True if a component of ``real`` below ``folder`` is a dot name
    (``real`` inside ``folder``; both real paths)."""
    rest = real[len(folder.rstrip("/")):]
    return "/." in rest


def hidden_target(real: str, server_root: str) -> bool:
    """True if a mount target lies in a hidden folder: a dot name below the
    server root for a target inside it, anywhere for one outside."""
    return hidden_below(real, server_root if _inside(real, server_root) else "/")


def _loops(real: str, trail: tuple[str, ...]) -> bool:
    """True if arriving at ``real`` would revisit the path or climb above it."""
    return any(_inside(walked, real) for walked in trail)


def _real_home(server_root: str, home: str) -> str:
    """``realpath(home)``, without a walk for the usual ``ROOT/<user>`` folder.

    The server root is already a real path, so a plain folder (not a
    link) right inside it is its own real path: one ``lstat`` instead of
    one per component.
    """
    parent, _, name = home.rstrip("/").rpartition("/")
    if parent == server_root and name not in ("", ".", ".."):
        try:
            if stat_mod.S_ISDIR(os.lstat(home).st_mode):
                return home.rstrip("/")
        except OSError:
            pass
    return os.path.realpath(home)


class Namespace:
    """Resolves and lists FTP paths of one home. Cheap to create."""

    def __init__(self, store: ConfigStore, home: str) -> None:
        self.store = store
        self._home = home

    @functools.cached_property
    def home(self) -> str:
        """The home's real path, found at first use: a session that only
        logs in (and most of a login storm) never looks at the disk."""
        return _real_home(self.store.server_root, self._home)

    def root(self) -> Node:
        area = Area(self.home, "/", self.store.permission(self.home), None)
        return Node("/", self.home, area, True, (self.home,))

    def resolve(self, ftp_path: str) -> Node:
        """The Node of an FTP path, or PathRefused."""
        node = self.root()
        for name in split_ftp_path(ftp_path):
            node = self.child(node, name)
        return node

    def child(self, node: Node, name: str) -> Node:
        """One step of the walk: ``name`` inside the folder ``node``."""
        check_name(name)
        ftp = node.ftp.rstrip("/") + "/" + name
        mount = self.store.mounts(node.real).get(name)
        if mount is not None:
            return self._enter_mount(node, ftp, mount)
        real = f"{node.real}/{name}" if node.real != "/" else f"/{name}"
        try:
            st = os.lstat(real)
        except (OSError, ValueError):
            st = None
        if st is not None and stat_mod.S_ISLNK(st.st_mode):
            try:
                real = os.path.realpath(real)
            except OSError:  # the link became something else while it was read
                raise PathRefused(f"{ftp}: changed while being resolved; try again") from None
            if not _inside(real, node.area.root):
                raise PathRefused(f"{ftp}: symbolic link leads outside the tree")
            if hidden_below(real, node.area.root):
                raise PathRefused(f"{ftp}: symbolic link leads to a hidden name")
            if _loops(real, node.trail):
                raise PathRefused(f"{ftp}: symbolic link loops back into its own path")
        return Node(ftp, real, node.area, False, node.trail + (real,))

    def _enter_mount(self, node: Node, ftp: str, mount: Mount) -> Node:
        target = self.store.real_folder(mount.target)
        if target is None:
            self.store.report_once(
                ("target", mount.source, self.store.version(mount.source.rsplit(":", 1)[0])),
                f"{mount.source}: mount target {mount.target!r} is missing or not a folder",
            )
            raise PathRefused(f"{ftp}: virtual directory is unavailable")
        if hidden_target(target, self.store.server_root):
            self.store.report_once(
                ("hidden", mount.source, self.store.version(mount.source.rsplit(":", 1)[0])),
                f"{mount.source}: mount {mount.name!r}: target {mount.target!r} lies in a hidden folder"
                + (f" (it is {target!r})" if target != mount.target else "") + "; refused",
            )
            raise PathRefused(f"{ftp}: virtual directory is unavailable")
        if _loops(target, node.trail):
            self.store.report_once(
                ("loop", mount.source, node.ftp),
                f"{mount.source}: mount {mount.name!r} -> {target!r} loops back into "
                f"its own path (seen at {ftp}); refused",
            )
            raise PathRefused(f"{ftp}: virtual directory loops back into its own path")
        area = Area(target, ftp, mount.permission, mount)
        return Node(ftp, target, area, True, node.trail + (target,))

    def listing(self, node: Node) -> Listing:
        """The visible entries of a folder, read as they are used: real
        ones (no dot names, no escaping or looping links, none hidden by a
        mount) in the folder's own order, then its mounts.

        The folder is opened now (an error is raised here, before any
        entry is read); it stays open until the listing is read to its end
        or closed. Nothing is held per entry: a folder of any size is
        listed in the memory of one entry at a time.
        """
        mounts = self.store.mounts(node.real)
        folder = open_folder(node.real)
        return Listing(self._visible(node, folder, mounts), node.area, folder)

    def _visible(self, node: Node, folder: Folder, mounts: dict[str, Mount]) -> Iterator[os.DirEntry | Entry]:
        with folder:
            for de in folder:  # the hot loop of a big folder: keep it short
                name = de.name
                # as check_name, but for NUL, which no file name holds;
                # a real entry that a mount hides is left for the mount
                if name[0] == "." or "\n" in name or "\r" in name or name in mounts:
                    continue
                if de.is_symlink():  # rare: resolved, kept only if it stays inside
                    try:
                        child = self.child(node, name)
                        de = Entry(name, node.area, False, beneath.lstat(child.real))
                    except (OSError, PathRefused):
                        continue
                yield de
        for name, mount in mounts.items():
            try:
                child = self._enter_mount(node, node.ftp.rstrip("/") + "/" + name, mount)
                entry = Entry(name, child.area, True, beneath.lstat(child.real))
            except (OSError, PathRefused):
                continue
            yield entry


class Folder(Protocol):
    """An open folder being read: what ``os.scandir`` returns."""

    def __iter__(self) -> Iterator[os.DirEntry]: ...
    def __enter__(self) -> Folder: ...
    def __exit__(self, *exc: object) -> None: ...
    def close(self) -> None: ...


class _OpenFolder:
    """A folder opened as checked (``beneath``) and read through its
    descriptor. Leaving the ``with`` block stops the reading; the
    descriptor stays open until ``close()`` (or until this object is
    gone), because the ``os.DirEntry`` objects read from it stat their
    entries relative to it when a line is made."""

    def __init__(self, real: str) -> None:
        fd = beneath.open_folder(real, listable=True)
        try:
            self._entries = os.scandir(fd)
        except BaseException:
            os.close(fd)
            raise
        self._release = weakref.finalize(self, os.close, fd)

    def __iter__(self) -> Iterator[os.DirEntry]:
        return self._entries

    def __enter__(self) -> _OpenFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._entries.close()

    def close(self) -> None:
        self._entries.close()
        self._release()


def open_folder(real: str) -> Folder:
    """The entries of the folder at ``real``, read as they are iterated:
    the one place a listing opens a folder."""
    return _OpenFolder(real)


class Listing:
    """A folder's visible entries, in listing order (mounts last), read
    from the folder as they are iterated (once).

    Plain entries are ``os.DirEntry`` objects: a LIST line stats one when
    it is made, NLST never does. Kept links and mount points are resolved
    (and stat'ed) ``Entry`` objects; they are few.
    """

    __slots__ = ("_entries", "area", "_folder")

    def __init__(self, entries: Iterator[os.DirEntry | Entry], area: Area, folder: Folder) -> None:
        self._entries, self.area, self._folder = entries, area, folder

    def __iter__(self) -> Iterator[os.DirEntry | Entry]:
        return self._entries

    @property
    def names(self) -> list[str]:
        """Every name, in listing order (reads the listing to its end)."""
        return [entry.name for entry in self._entries]

    def close(self) -> None:
        """Close the folder, whether or not every entry was read."""
        self._entries.close()
        self._folder.close()  # never started: the generator's ``with`` did not run


def require(node: Node, action: Action, *, what: str, on_entry: bool = False) -> None:
    """Raise unless ``action`` is allowed on ``node``.

    ``on_entry`` marks actions that delete, rename, overwrite or create the
    entry itself, which are never allowed on the home or a mount point.
    """
    if on_entry and node.is_top:
        kind = "the home folder" if node.ftp == "/" else "a virtual directory"
        raise PathRefused(f"{node.ftp} is {kind}: it can't be deleted, renamed, overwritten or re-created")
    missing = node.area.permission.missing(action)
    if missing:
        words = " and ".join(f"'{w}'" for w in missing)
        raise PermissionRefused(
            f"Permission denied: {what} needs {words} permission "
            f"({node.area.top} allows: {node.area.permission})"
        )
