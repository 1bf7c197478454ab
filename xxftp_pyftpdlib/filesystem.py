"""XxftpFS: pyftpdlib's AbstractedFS over the rules of ``tree``.

pyftpdlib passes "filesystem paths" between its handler and the FS. Here
they are the home folder joined with the normalised FTP path: a plain
string bijection (``ftp2fs``/``fs2ftp``) that never touches the disk and
never raises. Every operation resolves its path through ``tree.Namespace``
(mounts, hidden names, symlink containment, loops) and checks the area's
permission itself, so the rules hold for every command, with any
authorizer (``DummyAuthorizer`` included) and any handler. Under a mount,
such a path is *not* the real path: use ``fs.resolve(path).real`` for that.

Every use of a resolved real path goes through ``beneath`` (opened with no
link followed on the way), so a folder swapped for a symbolic link after
the resolution meets an error (550), never what the link leads to.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import secrets
import stat as stat_mod
import time
from typing import Callable, Iterator

from pyftpdlib.filesystems import AbstractedFS, FilesystemError

from . import beneath, listing
from .config import shared_store
from .ledger import Ledger, move, shared_quotas
from .ledger.scan import entry_keys, measure
from .permissions import Action, Permission
from .quota import Busy, QuotaExceeded, QuotaInvalid, Usage, folder_key
from .tree import Entry, Listing, Namespace, Node, PathRefused, check_name, require
from .uploads import Refused, Upload


class QuotaRefused(FilesystemError):
    """A refusal for lack of storage allocation: FTP reply 552."""

    code = 552


class FileBusy(FilesystemError):
    """Another upload is writing the file (or into the folder): FTP reply 450."""

    code = 450


class PathChanged(FilesystemError):
    """A folder on the path became a symbolic link between the check and the use: 550."""

    code = 550


def _bound(method):
    """Answer a path that changed under an operation (``beneath.Swapped``)
    with a clear 550 naming the FTP path, not pyftpdlib's bare strerror."""

    @functools.wraps(method)
    def run(self, path, *args, **kwargs):
        try:
            return method(self, path, *args, **kwargs)
        except beneath.Swapped as err:
            where = self.fs2ftp(path) if isinstance(path, str) else "path"
            raise PathChanged(f"{where}: {err.strerror}") from None

    return run


class XxftpFS(AbstractedFS):
    """An AbstractedFS with xxftp mounts, hidden names and permissions."""

    def __init__(self, root: str, cmd_channel) -> None:
        super().__init__(os.path.normpath(root), cmd_channel)
        authorizer = getattr(cmd_channel, "authorizer", None)
        server_root = getattr(authorizer, "root", None) or os.path.dirname(os.path.realpath(root))
        store = shared_store(server_root)
        self.namespace = Namespace(store, root)
        self.quotas = shared_quotas(store)
        self.upload_mode = getattr(cmd_channel, "upload_mode", "atomic")
        self._listed: tuple[str, dict[str, os.DirEntry | Entry], Permission, Listing] | None = None
        # the last listdir: (folder, its entries by name, their permission)
        self._memo: dict[str, Node] | None = None  # on once a handler calls forget()
        self._stat_memo: dict[str, os.stat_result] | None = None  # likewise, until the command changes something

    def forget(self) -> None:
        """Start a new command: drop what the last one resolved.

        Only a handler that calls this at every command (XxftpHandler does)
        gets resolutions shared within a command; otherwise every call
        resolves afresh.
        """
        self._memo = {}
        self._stat_memo = {}
        self._listed = None  # a listing being sent keeps its own reference (and its folder's descriptor)

    # --- path mapping (string operations only)

    def ftp2fs(self, ftppath: str) -> str:
        ftp = self.ftpnorm(ftppath)
        return self.root if ftp == "/" else self.root.rstrip("/") + ftp

    def _ftp_of(self, fspath: str) -> str | None:
        fspath = os.path.normpath(fspath)
        home = self.root.rstrip("/")
        if fspath == self.root or fspath == home:
            return "/"
        if fspath.startswith(home + "/"):
            return fspath[len(home):]
        return None

    def fs2ftp(self, fspath: str) -> str:
        return self._ftp_of(fspath) or "/"

    def validpath(self, path: str) -> bool:
        # Only a lexical check: every operation resolves and refuses with
        # the precise reason (hidden name, escape, loop, permission).
        return self._ftp_of(path) is not None

    def realpath(self, path: str) -> str:
        return os.path.normpath(path)

    def resolve(self, path: str) -> Node:
        """The resolved node of an FS path; FilesystemError if refused."""
        ftp = self._ftp_of(path)
        if ftp is None:
            raise FilesystemError("path outside the home folder")
        memo = self._memo
        node = memo.get(ftp) if memo is not None else None
        if node is not None:
            return node
        try:
            node = self.namespace.resolve(ftp)
        except PathRefused as err:
            raise FilesystemError(str(err)) from None
        if memo is not None and len(memo) < 64:  # pyftpdlib resolves a path 2-3 times a command
            memo[ftp] = node
        return node

    def _changing(self) -> None:
        """The command changes the tree: stats taken so far are stale."""
        if self._stat_memo:
            self._stat_memo = {}

    def _require(self, node: Node, action: Action, what: str, on_entry: bool = False) -> None:
        try:
            require(node, action, what=what, on_entry=on_entry)
        except PathRefused as err:
            raise FilesystemError(str(err)) from None

    # --- files

    @_bound
    def open(self, filename: str, mode: str):
        node = self.resolve(filename)
        if "r" in mode and "+" not in mode:
            self._require(node, Action.READ, "downloading")
            return open(node.real, mode, opener=_download_opener)  # a real file: sendfile takes it
        self._changing()
        try:
            mode_bits = beneath.lstat(node.real).st_mode
        except OSError:
            mode_bits = 0
        if stat_mod.S_ISDIR(mode_bits) and not node.is_top:
            # Refused before the data connection (an atomic upload would
            # only fail at its final rename, after the whole transfer).
            raise FilesystemError(f"{node.ftp} is a folder")
        try:
            require(node, Action.OVERWRITE, what="changing an existing file", on_entry=True)
            overwrite_refusal = None
        except PathRefused as err:
            overwrite_refusal = str(err)
        if stat_mod.S_ISREG(mode_bits):
            if overwrite_refusal is not None:
                raise FilesystemError(overwrite_refusal)
        else:
            self._require(node, Action.CREATE, "uploading a new file", on_entry=True)
        ledger = self._ledger(node)
        try:
            return Upload(node.real, os.path.normpath(filename), mode, self.upload_mode, ledger,
                          overwrite_refusal=overwrite_refusal, tree_of=self.quotas.tree_of)
        except Busy as err:
            raise FileBusy(f"{node.ftp}: {err}") from None
        except QuotaExceeded as err:
            raise QuotaRefused(str(err.at(node.area.top))) from None
        except Refused as err:
            raise FilesystemError(str(err)) from None

    def _tree(self, node: Node, itself: bool = False) -> Ledger:
        """The ledger governing ``node``: its folder's tree (``itself``: the
        node is a folder to be measured as such, e.g. for SITE QUOTA)."""
        folder = node.real if itself else os.path.dirname(node.real)
        return self.quotas.tree_of(folder)

    def _ledger(self, node: Node) -> Ledger:
        ledger = self._tree(node)
        if ledger.limit is None:
            raise QuotaRefused(str(QuotaInvalid(top=node.area.top)))
        return ledger

    @_bound
    def quota_usage(self, path: str) -> tuple[Node, Usage | None]:
        """The area of ``path`` and its quota usage (None: unlimited)."""
        node = self.resolve(path)
        ledger = self._tree(node, itself=self._is(node.real, stat_mod.S_ISDIR))
        return node, (ledger.usage() if ledger.limit != 0 else None)

    def _unique_folder(self, folder_path: str, prefix: str, suffix: str = "") -> Node:
        folder = self.resolve(folder_path)
        try:
            check_name(prefix + "x" + suffix)
        except PathRefused as err:
            raise FilesystemError(str(err)) from None
        self._require(folder, Action.CREATE, "uploading a new file")
        return folder

    def check_unique_upload(self, line: str) -> None:
        """The checks STOU's ``mkstemp`` will make, for a 550 up front."""
        if line:
            folder, prefix = os.path.split(self.ftp2fs(line))
            self._unique_folder(folder, prefix + ".")
        else:
            self._unique_folder(self.ftp2fs(self.cwd), "ftpd.")

    def mkstemp(self, suffix: str = "", prefix: str = "", dir: str | None = None, mode: str = "wb"):
        """STOU: reserve a unique name, then upload into it like STOR (quota,
        upload mode); a failed upload removes the name again."""
        folder = self._unique_folder(dir if dir is not None else self.ftp2fs(self.cwd), prefix, suffix)
        self._changing()
        try:
            fd = beneath.open_folder(folder.real)
        except beneath.Swapped as err:
            raise PathChanged(f"{folder.ftp}: {err.strerror}") from None
        try:  # the name is made and, if the upload can't start, removed in the folder checked
            base = _unique_name(fd, prefix, suffix)
            ftp = folder.ftp.rstrip("/") + "/" + base
            real = folder.real.rstrip("/") + "/" + base
            node = Node(ftp, real, folder.area, False, folder.trail + (real,))
            try:
                return Upload(real, self.ftp2fs(ftp), "wb", self.upload_mode, self._ledger(node), placeholder=True,
                              tree_of=self.quotas.tree_of)
            except QuotaExceeded as err:
                os.unlink(base, dir_fd=fd)
                raise QuotaRefused(str(err.at(node.area.top))) from None
            except Busy as err:  # a live upload holds the new file's inode (a forged or foreign entry)
                os.unlink(base, dir_fd=fd)
                raise FileBusy(f"{ftp}: {err}") from None
            except beneath.Swapped as err:
                os.unlink(base, dir_fd=fd)
                raise PathChanged(f"{folder.ftp}: {err.strerror}") from None
            except BaseException:
                os.unlink(base, dir_fd=fd)
                raise
        finally:
            os.close(fd)

    @_bound
    def remove(self, path: str) -> None:
        node = self.resolve(path)
        self._require(node, Action.CHANGE, "deleting", on_entry=True)
        self._changing()
        ledger = self._tree(node)

        def measure() -> tuple[int, list[str]]:  # under the ledger's lock: what is there now
            size, keys = entry_keys(node.real)
            return -size, keys

        self._change(node, ledger, lambda: beneath.unlink(node.real), measure)

    def _change(self, node: Node, ledger: Ledger, action, measure) -> None:
        try:
            ledger.change(0, node.real, action, measure=measure)
        except Busy as err:
            raise FileBusy(f"{node.ftp}: {err}") from None

    def check_rename_source(self, path: str) -> None:
        """Refuse at RNFR what RNTO would refuse for the source anyway."""
        self._require(self.resolve(path), Action.CHANGE, "renaming", on_entry=True)

    @_bound
    def rename(self, src: str, dst: str) -> None:
        old, new = self.resolve(src), self.resolve(dst)
        self._require(old, Action.CHANGE, "renaming", on_entry=True)
        self._require(new, Action.CHANGE, "renaming into this place", on_entry=True)
        self._changing()
        if self.namespace.store.has_size(old.real):
            raise FilesystemError(f"{old.ftp} is a quota tree of its own: it can't be moved")
        src_ledger, dst_ledger = self._tree(old), self._tree(new)
        if dst_ledger.limit is None and src_ledger.root != dst_ledger.root:
            raise QuotaRefused(str(QuotaInvalid(top=new.area.top)))
        try:
            move(src_ledger, dst_ledger, lambda: self._measure(old), lambda: entry_keys(new.real), old.real,
                 lambda: beneath.rename(old.real, new.real), renamed=(old.real, new.real))
        except QuotaExceeded as err:
            raise QuotaRefused(str(err.at(new.area.top))) from None
        except Busy as err:
            raise FileBusy(f"{old.ftp}: {err}") from None
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise FilesystemError("can't move between different filesystems; "
                                      "download and upload instead") from None
            raise

    def _measure(self, node: Node) -> tuple[int, list[str]]:
        """(size, keys) of what a move to another tree carries: a file, or a whole folder."""
        size, keys = entry_keys(node.real)
        if keys and keys[0].startswith("folder:"):
            size, found = measure(node.real, self.namespace.store, keys=set())
            keys = list(found)
        return size, keys

    @_bound
    def chmod(self, path: str, mode: int) -> None:
        node = self.resolve(path)
        self._require(node, Action.CHANGE, "changing modes", on_entry=True)
        self._changing()
        beneath.chmod(node.real, mode)

    @_bound
    def utime(self, path: str, timeval: float) -> None:
        node = self.resolve(path)
        self._require(node, Action.CHANGE, "setting the modification time")
        self._changing()
        beneath.utime(node.real, (timeval, timeval))

    # --- folders

    @_bound
    def chdir(self, path: str) -> None:
        node = self.resolve(path)
        if not stat_mod.S_ISDIR(self.stat(path).st_mode):
            raise FilesystemError(f"{node.ftp}: not a folder")
        self.cwd = node.ftp

    @_bound
    def mkdir(self, path: str) -> None:
        node = self.resolve(path)
        self._require(node, Action.CHANGE, "creating a folder", on_entry=True)
        self._changing()
        beneath.mkdir(node.real)

    @_bound
    def rmdir(self, path: str) -> None:
        node = self.resolve(path)
        self._require(node, Action.CHANGE, "removing a folder", on_entry=True)
        self._changing()
        st = beneath.lstat(node.real)
        ledger = self._tree(node)
        self._change(node, ledger, lambda: beneath.rmdir(node.real), lambda: (0, [folder_key(st.st_dev, st.st_ino)]))

    @_bound
    def listdir(self, path: str) -> list[str]:
        """Every visible name of a folder, for pyftpdlib's own LIST, NLST,
        MLSD and STAT (whose lines ``format_list``/``format_mlsx`` make
        from the entries kept here). XxftpHandler lists with
        ``folder_lines`` instead, which holds no more than a slice."""
        listed = self.namespace.listing(self.resolve(path))
        found = {entry.name: entry for entry in listed}
        # the Listing too: its folder's descriptor must outlive the entries' stats
        self._listed = (os.path.normpath(path), found, listed.area.permission, listed)
        return list(found)

    listdirinfo = listdir

    def folder_lines(self, path: str, kind: str, perms: str = "", facts=()) -> FolderLines:
        """The listing of the folder at ``path`` as encoded lines: ``kind``
        LIST (``ls -l``), NLST (names) or MLSD (``perms``: the
        authorizer's letters; ``facts``: the ones asked for).

        The folder is opened and its first slice read now (errors are
        raised here, before a reply); the rest is read, stat'ed and
        formatted as the lines are taken, ``LINES_PER_CHUNK`` at a time.
        """
        listed = self.namespace.listing(self.resolve(path))
        try:
            entries, whole = listing.in_order(listed)
        except BaseException:
            listed.close()
            raise
        encoding = self._encoding()
        if kind == "NLST":
            chunks = _name_chunks(entries, *encoding)
        else:
            if kind == "MLSD":
                line = listing.mlsx_formatter(facts, self._timefunc(), perms)
            else:
                line = listing.list_formatter(self._owner, self._group, self._timefunc(), time.time())
            chunks = _chunks(_entry_stats(entries, listed.area.permission), line, *encoding)
        return FolderLines(chunks, whole, listed)

    # --- information

    @_bound
    def stat(self, path: str) -> os.stat_result:
        """The stat of a path's real entry (whose last component is no link
        either); shared within a command that changes nothing, as the
        resolution is (pyftpdlib asks 2-3 times a command)."""
        real = self.resolve(path).real
        memo = self._stat_memo
        st = memo.get(real) if memo is not None else None
        if st is None:
            st = beneath.lstat(real)
            if memo is not None and len(memo) < 64:
                memo[real] = st
        return st

    lstat = stat  # links inside an area are transparent

    def readlink(self, path: str) -> str:
        raise FilesystemError("symbolic links are not shown")

    @staticmethod
    def _is(real: str, kind: Callable[[int], bool]) -> bool:
        try:
            return kind(beneath.lstat(real).st_mode)
        except OSError:
            return False

    def _test(self, path: str, kind: Callable[[int], bool]) -> bool:
        try:
            return kind(self.stat(path).st_mode)
        except (FilesystemError, OSError):
            return False

    def isfile(self, path: str) -> bool:
        return self._test(path, stat_mod.S_ISREG)

    def isdir(self, path: str) -> bool:
        return self._test(path, stat_mod.S_ISDIR)

    def islink(self, path: str) -> bool:
        return False

    def lexists(self, path: str) -> bool:
        return self._test(path, bool)

    def getsize(self, path: str) -> int:
        return self.stat(path).st_size

    def getmtime(self, path: str) -> float:
        return self.stat(path).st_mtime

    # --- listings

    def _stats(self, basedir: str, names, ignore_err: bool) -> Iterator[tuple[str, os.stat_result, Permission, bool]]:
        """(name, stat, permission, is_top) of ``names`` in ``basedir``: from
        the last listdir if it was of that folder, else resolved one by one
        (LIST of a file, MLST). Entries that vanished are skipped.

        Each entry leaves the kept listing as its line is made: a DirEntry
        keeps its stat, and a big folder's would otherwise stay in memory
        (about 800 bytes a file) for the rest of the session. A name asked
        for again is resolved afresh.
        """
        basedir = os.path.normpath(basedir)
        listed = self._listed if self._listed is not None and self._listed[0] == basedir else None
        found = listed[1] if listed is not None else {}
        permission = listed[2] if listed is not None else None
        for name in names:
            try:
                entry = found.pop(name, None)
                if entry is None:
                    path = os.path.join(basedir, name)
                    node = self.resolve(path)
                    entry = Entry(name, node.area, node.is_top, self.stat(path))
                if type(entry) is Entry:
                    result = (name, entry.st, entry.area.permission, entry.is_top)
                else:  # an os.DirEntry: a plain file or folder
                    result = (name, entry.stat(follow_symlinks=False), permission, False)
            except (OSError, FilesystemError):
                if not ignore_err:
                    raise
                continue
            yield result
        if listed is not None:
            if self._listed is listed:
                self._listed = None
            listed[3].close()  # used up: its folder's descriptor is released

    def _timefunc(self):
        return time.gmtime if getattr(self.cmd_channel, "use_gmt_times", True) else time.localtime

    def _encoding(self) -> tuple[str, str]:
        channel = self.cmd_channel
        return getattr(channel, "encoding", "utf8"), getattr(channel, "unicode_errors", "replace")

    def format_list(self, basedir: str, listing_: list[str], ignore_err: bool = True) -> Iterator[bytes]:
        line = listing.list_formatter(self._owner, self._group, self._timefunc(), time.time())
        return _chunks(self._stats(basedir, listing_, ignore_err), line, *self._encoding())

    def format_mlsx(self, basedir: str, listing_: list[str], perms: str, facts, ignore_err: bool = True) -> Iterator[bytes]:
        line = listing.mlsx_formatter(facts, self._timefunc(), perms)
        return _chunks(self._stats(basedir, listing_, ignore_err), line, *self._encoding())

    _names: dict[tuple[str, int], str] = {}

    def _owner(self, uid: int) -> str:
        key = ("u", uid)
        if key not in self._names:
            self._names[key] = str(self.get_user_by_uid(uid))
        return self._names[key]

    def _group(self, gid: int) -> str:
        key = ("g", gid)
        if key not in self._names:
            self._names[key] = str(self.get_group_by_gid(gid))
        return self._names[key]


def _download_opener(path: str, flags: int) -> int:
    """Open a file to download: never blocking (a FIFO or device put in the
    file's place after its stat would stall the IO loop in ``open``), and
    only a regular file, checked on what was opened."""
    fd = beneath.opener(path, flags | os.O_NONBLOCK)
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise FilesystemError("not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unique_name(folder: int, prefix: str, suffix: str) -> str:
    """Create an empty file of a new name ``prefix + random + suffix`` in the
    open folder ``folder`` (as ``tempfile.mkstemp`` does in a path); its name."""
    for _ in range(100):
        name = f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=folder))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no unique name found")


LINES_PER_CHUNK = 16


class FolderLines:
    """The lines of one folder's listing, made as they are iterated:
    ``bytes`` chunks of ``LINES_PER_CHUNK`` lines. ``whole``: the folder
    fit in one sorted slice (``listing.in_order``). Close it to release
    the folder before the end."""

    __slots__ = ("_chunks", "whole", "_listed")

    def __init__(self, chunks: Iterator[bytes], whole: bool, listed: Listing) -> None:
        self._chunks, self.whole, self._listed = chunks, whole, listed

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._listed.close()


def _entry_stats(entries: Iterator[os.DirEntry | Entry],
                 permission: Permission) -> Iterator[tuple[str, os.stat_result, Permission, bool]]:
    """(name, stat, permission, is_top) of each entry; one that vanished
    since its folder was read is left out."""
    for entry in entries:
        if type(entry) is Entry:
            yield entry.name, entry.st, entry.area.permission, entry.is_top
            continue
        try:  # an os.DirEntry: a plain file or folder
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        yield entry.name, st, permission, False


NAMES_PER_CHUNK = 128  # NLST lines cost little each: more of them per chunk


def _name_chunks(entries: Iterator[os.DirEntry | Entry], encoding: str, errors: str) -> Iterator[bytes]:
    """NLST lines (the names alone), ``NAMES_PER_CHUNK`` at a time."""
    while True:
        names = [entry.name for entry in itertools.islice(entries, NAMES_PER_CHUNK)]
        if not names:
            return
        yield ("\r\n".join(names) + "\r\n").encode(encoding, errors)


def _chunks(entries: Iterator[tuple[str, os.stat_result, Permission, bool]], line: Callable[..., str],
            encoding: str, errors: str) -> Iterator[bytes]:
    """The listing lines of ``entries``, encoded ``LINES_PER_CHUNK`` at a time.

    pyftpdlib's producer takes 20 items per send: one line each made a
    send (and a turn of the IO loop) per 20 lines of a big folder. Much
    larger chunks cost more than they save: asynchat copies what a
    partial send leaves over.
    """
    batch: list[str] = []
    for name, st, permission, is_top in entries:
        batch.append(line(name, st, permission, is_top))
        if len(batch) == LINES_PER_CHUNK:
            yield "".join(batch).encode(encoding, errors)
            batch = []
    if batch:
        yield "".join(batch).encode(encoding, errors)
