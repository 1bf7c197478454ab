"""Stateful model test of quotas over real FTP sessions.

Three sessions (alice twice, bob) on one real server drive random
interleavings of uploads (STOR, APPE, REST+STOR) that are left half-way,
fed, finished, aborted or reset, with renames of files and folders within
and across quota trees (into and out of mounts), deletes and folder
changes. The world:

    alice/       40K  mounts team -> $root/team, inner -> $root/team/inner,
                      free -> $root/free (read,write,modify)
    bob/         24K  mounts team, free
    team/        32K  declares the mount inner -> $root/team/inner, so the
                      folder inside it is a tree of its own
    team/inner/  16K  reached as /team/inner (both users) and /inner (alice)
    free/        no limit
    and a folder d in each of them (uploads, renames and RMD use d and e).

Every reply must be one the rules allow for the situation:

- one writer per file: an upload to a file another upload is writing
  (by any name) gets 450 at once;
- while a file is written in place (APPE, REST+STOR): DELE answers 450, a
  rename of it (or of its folder) into another tree 450, within its tree
  250 (the upload follows the file);
- an atomic STOR commits into the folder it started in, wherever that
  folder has moved within its tree: RMD of that folder answers 450, a
  move of it into another tree 450;
- an atomic STOR needs room for all its bytes while it runs (the file it
  replaces is still there), and is charged its growth when it commits; a
  new-file upload whose name appeared meanwhile becomes an overwrite at
  commit; failures leave nothing and cut in-place writes back;
- a rename into another limited tree is 250 or 552; with no upload
  running in that tree, exactly 552 when it does not fit. An upload
  finished at once into a tree without running uploads is exactly 226
  when it fits, else 552; with uploads running there, 226 or 552.

After every step:

- no limited tree holds more than its limit: the scan of its files plus
  the temporaries of running atomic uploads (named ``.xxftpd-*`` ones, and
  unnamed O_TMPFILE ones the in-process server holds open);
- every file the model knows (bytes answered with 226, moved by the
  sessions' own renames) is on disk with exactly that content, or, while
  an in-place upload writes it, that content extended by a prefix of the
  upload's bytes; no other file exists;
- once no upload runs: each ledger's ``used`` equals a scan of its tree
  and no temporary is left anywhere.

A step that sends bytes waits until the server has taken them (STAT's
byte count, and the bytes on disk) or ended the upload. Runs briefly in
CI; see fuzz/README.md to run it for an hour.
"""

from __future__ import annotations

import fcntl
import ftplib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from conftest import HOST, ServerThread, Tree, temporaries
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger.scan import scan
from xxftp_pyftpdlib.server import Options, make_handler, make_server

KiB = 1024
LIMITS = {"alice": 40 * KiB, "bob": 24 * KiB, "team": 32 * KiB, "team/inner": 16 * KiB}
TREES = ("team/inner", "team", "alice", "bob", "free")  # the deepest first
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
USERS = ("alice", "alice", "bob")  # one session each
AREAS = {  # FTP folder -> real folder (relative to the root), per user
    "alice": (("/", "alice"), ("/team", "team"), ("/team/inner", "team/inner"),
              ("/inner", "team/inner"), ("/free", "free")),
    "bob": (("/", "bob"), ("/team", "team"), ("/team/inner", "team/inner"), ("/free", "free")),
}
STREAM = 96 * KiB  # the most bytes one upload sends
QUOTA_WAIT = 0.3  # seconds an upload may wait for room held by others (the server's default is longer)
SETTLE = 12.0  # seconds the server may take to take or refuse bytes sent
TIMEOUT = 30.0

EXAMPLES = int(os.environ.get("XXFTPD_MODEL_EXAMPLES", "0"))
STEPS = int(os.environ.get("XXFTPD_MODEL_STEPS", "0"))
SECONDS = float(os.environ.get("XXFTPD_MODEL_SECONDS", "0"))

SESSION = st.integers(0, 2)
AREA = st.integers(0, 4)  # an index into the user's AREAS
SUB = st.sampled_from(["", "", "d", "e"])
NAME = st.sampled_from(["a", "b"])
FOLDER = st.sampled_from(["d", "e"])
# A file or folder: (known, index, area, [folder,] name). With known, the
# index picks one that exists or that an upload writes (and the route to
# it); else the path is made of the area, folder and name.
KNOWN = st.sampled_from([True, True, False])
FILE = st.tuples(KNOWN, st.integers(0, 15), AREA, SUB, NAME)
DIR = st.tuples(KNOWN, st.integers(0, 15), AREA, FOLDER)
SIZE = st.one_of(st.integers(1, 12).map(lambda k: k * KiB), st.integers(1, 12 * KiB))
MORE = st.one_of(st.integers(0, 12).map(lambda k: k * KiB), st.integers(0, 12 * KiB))


def tree_of(rel: str) -> str:
    return next(t for t in TREES if rel == t or rel.startswith(t + "/"))


def inside(rel: str, folder: str) -> bool:
    return rel.startswith(folder + "/")


def pick(items: list, index: int):
    return items[index % len(items)]


def expect(reply: str, allowed: set[str], what: str) -> str:
    assert reply[:3] in allowed and "Internal error" not in reply, \
        f"{what}: got {reply!r}, expected {' or '.join(sorted(allowed))}"
    return reply[:3]


def reset(sock: socket.socket) -> None:
    """Close abruptly: the peer sees a reset, not an end of stream."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass
class Upload:
    """A running upload as the test sees it."""

    kind: str  # "STOR" (atomic: a new file or a replacement), "APPE" or "REST" (in place)
    ftp: str  # the FTP path it was started with
    path: str  # the file it writes, relative to the root; follows renames
    old: bytes  # the file's content when it started (b"" if there was none)
    rest: int  # REST offset
    data: bytes  # the bytes it sends, in order
    sock: socket.socket | None = None
    sent: int = 0

    @property
    def in_place(self) -> bool:
        return self.kind != "STOR"

    def result(self, k: int | None = None) -> bytes:
        """The file once the first ``k`` bytes (default: all sent) are written."""
        k = self.sent if k is None else k
        new = self.data[:k]
        if self.kind == "STOR":
            return new
        if self.kind == "APPE":
            return self.old + new
        return self.old[:self.rest] + new + self.old[self.rest + k:]

    def extended(self, got: bytes, cut: bool = False) -> bool:
        """True if ``got`` is the file with some prefix of the sent bytes
        written; ``cut``: and then cut back to its old length (a failed
        in-place upload: REST+STOR inside the file keeps what it overwrote)."""
        if self.kind == "APPE":
            k = len(got) - len(self.old)
            return got == self.old if cut else 0 <= k <= self.sent and got == self.result(k)
        if got[:self.rest] != self.old[:self.rest]:
            return False
        tail, k = got[self.rest:], 0
        while k < min(len(tail), self.sent) and tail[k] == self.data[k]:
            k += 1
        return any(got == self.result(j)[:len(self.old) if cut else None] for j in range(k, max(-1, k - 8), -1))

    def __str__(self) -> str:
        return f"{self.kind} {self.ftp} ({self.sent} bytes sent)"


class Session:
    """One logged-in ftplib client; replies are read raw, never raised."""

    def __init__(self, port: int, user: str) -> None:
        self.user = user
        self.ftp = ftplib.FTP()
        self.ftp.connect(HOST, port, timeout=TIMEOUT)
        self.ftp.login(user, PASSWORDS[user])
        self.ftp.voidcmd("TYPE I")
        self.upload: Upload | None = None
        self.pasv: tuple[str, int] | None = None

    def send(self, line: str) -> str:
        self.ftp.putcmd(line)
        return self.reply()

    def reply(self) -> str:
        return self.ftp.getmultiline()

    def close(self) -> None:
        """Reset the data and control connections."""
        if self.upload is not None and self.upload.sock is not None:
            reset(self.upload.sock)
        if self.ftp.sock is not None:
            try:
                self.ftp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.ftp.close()
        except OSError:
            pass


def step(method):
    """Mark the machine broken while a step runs: teardown then only cleans up."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self.healthy = False
        method(self, *args, **kwargs)
        self.healthy = True
    return run


class QuotaModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.healthy = True
        self.sessions: list[Session] = []
        self.server: ServerThread | None = None
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="xxftpd-model-"))
        try:
            self.root = os.path.join(self.base, "root")
            self._build()
            self.store = ConfigStore(self.root)
            options = Options(root=self.root, host=HOST, port=0)
            handler = make_handler(options)
            handler.dtp_handler = type("ModelDTPHandler", (handler.dtp_handler,), {"quota_wait": QUOTA_WAIT})
            self.server = ServerThread(make_server(options, handler))
            self.server.start()
            self.sessions = [Session(self.server.port, user) for user in USERS]
        except BaseException:
            self._close()
            raise
        self.model: dict[str, bytes] = {}  # file (relative to the root) -> bytes answered with 226
        self.serial = 0

    def _build(self) -> None:
        tree = Tree(Path(self.root))
        tree.user("alice", password=PASSWORDS["alice"], size="40K",
                  virtual="team $root/team read,write,modify\ninner $root/team/inner read,write,modify\n"
                          "free $root/free read,write,modify\n")
        tree.user("bob", password=PASSWORDS["bob"], size="24K",
                  virtual="team $root/team read,write,modify\nfree $root/free read,write,modify\n")
        team = tree.folder("team")
        tree.xxftp(team, "size", "32K\n")
        tree.xxftp(team, "virtual", "inner $root/team/inner read,write,modify\n")
        tree.xxftp(tree.folder("team/inner"), "size", "16K\n")
        for top in ("alice", "bob", "team", "team/inner", "free"):
            tree.folder(top + "/d")

    def _close(self) -> None:
        for sess in self.sessions:
            sess.close()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def teardown(self) -> None:
        try:
            if self.healthy:  # end what still runs, then everything must settle
                for sess in self.sessions:
                    if sess.upload is not None:
                        self._finish(sess, {"226", "552"})
                self.check()
        finally:
            self._close()

    # --- where things are

    def real(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def routes(self, user: str, rel: str) -> list[str]:
        """The FTP paths by which ``user`` reaches ``rel``."""
        found = []
        for ftp, top in AREAS[user]:
            if inside(rel, top):
                path = ftp.rstrip("/") + rel[len(top):]
                if path not in found:
                    found.append(path)
        return found

    def place(self, sess: Session, spec: tuple, known: set[str]) -> tuple[str, str]:
        """(FTP path, real path relative to the root) of a FILE or DIR spec."""
        use_known, index, area, *parts = spec
        reachable = [rel for rel in sorted(known) if self.routes(sess.user, rel)]
        if use_known and reachable:
            rel = pick(reachable, index)
            return pick(self.routes(sess.user, rel), index), rel
        ftp, rel = pick(list(AREAS[sess.user]), area)
        for part in parts:
            if part:
                ftp, rel = ftp.rstrip("/") + "/" + part, rel + "/" + part
        return ftp, rel

    def known_files(self) -> set[str]:
        return set(self.model) | {u.path for u in self.running()}

    def known_folders(self) -> set[str]:
        """The folders (d, e) that exist in the areas, and those uploads commit into."""
        tops = {top for areas in AREAS.values() for _, top in areas}
        found = {os.path.dirname(u.path) for u in self.running()}
        for top in tops:
            found |= {f"{top}/{e.name}" for e in os.scandir(self.real(top)) if e.is_dir() and e.name[0] != "."}
        return found - tops

    def idle(self) -> list[Session]:
        return [s for s in self.sessions if s.upload is None]

    def holding(self) -> list[Session]:
        return [s for s in self.sessions if s.upload is not None]

    def running(self) -> list[Upload]:
        return [s.upload for s in self.sessions if s.upload is not None]

    def busy(self, rel: str) -> bool:
        return any(u.path == rel for u in self.running())

    def written_in_place(self, rel: str) -> bool:
        return any(u.path == rel and u.in_place for u in self.running())

    def running_in(self, tree: str) -> bool:
        return any(tree_of(u.path) == tree for u in self.running())

    def fits(self, tree: str, growth: int) -> bool:
        if tree not in LIMITS:
            return True
        used = sum(len(data) for rel, data in self.model.items() if tree_of(rel) == tree)
        return used + growth <= LIMITS[tree]

    # --- uploads

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, kind=st.sampled_from(["STOR", "APPE", "REST"]), where=FILE, size=SIZE,
          hold=st.booleans(), half=st.booleans())
    @step
    def start_upload(self, s, kind, where, size, hold, half):
        """Start an upload; leave it half-way (data connection open) or finish it at once."""
        sess = pick(self.idle(), s)
        path, rel = self.place(sess, where, self.known_files())
        old = self.model.get(rel, b"")
        if not old:
            kind = "STOR"  # APPE and REST resume an existing file
        rest = (len(old) // 2 or len(old)) if half else len(old)
        self.serial += 1
        data = hashlib.shake_256(f"upload {self.serial}".encode()).digest(STREAM)
        upload = Upload(kind, path, rel, old, rest if kind == "REST" else 0, data)
        tree = tree_of(rel)
        # room needed: an atomic STOR's temporary sits beside the file it replaces
        growth = {"STOR": size, "APPE": size,
                  "REST": max(len(old), rest + size) - len(old)}[kind]
        exact = not hold and not self.running_in(tree)
        if self.busy(rel):
            allowed = {"450"}
        elif not os.path.isdir(self.real(os.path.dirname(rel))):
            allowed = {"550"}
        elif exact and self.fits(tree, growth):
            allowed = {"125", "150"}
        else:
            allowed = {"125", "150", "552"}
        reply = sess.send("PASV")
        expect(reply, {"227"}, f"{sess.user} PASV")
        sess.pasv = ftplib.parse227(reply)
        if kind == "REST":
            expect(sess.send(f"REST {rest}"), {"350"}, f"{sess.user} REST {rest}")
        what = f"{sess.user} {kind} {path}"
        if expect(sess.send(f"{'APPE' if kind == 'APPE' else 'STOR'} {path}"), allowed, what) not in ("125", "150"):
            return
        upload.sock = socket.create_connection(sess.pasv, timeout=TIMEOUT)
        sess.upload = upload
        self._send(sess, size)
        if hold:
            self._settle(sess)
        elif exact:
            self._finish(sess, {"226"} if self.fits(tree, growth) else {"552"})
        else:
            self._finish(sess, {"226", "552"})

    @precondition(lambda self: self.holding())
    @rule(s=SESSION, size=MORE, end=st.booleans())
    @step
    def feed(self, s, size, end):
        """Send more bytes of a held upload; maybe end it (close, read the reply)."""
        sess = pick(self.holding(), s)
        self._send(sess, size)
        if end:
            self._finish(sess, {"226", "552"})
        else:
            self._settle(sess)

    @precondition(lambda self: self.holding())
    @rule(s=SESSION)
    @step
    def abort(self, s):
        sess = pick(self.holding(), s)
        upload, sess.upload = sess.upload, None
        what = f"{sess.user} ABOR of {upload}"
        if expect(sess.send("ABOR"), {"225", "426"}, what) == "426":
            expect(sess.reply(), {"225", "226"}, what)
        reset(upload.sock)
        self._failed(upload)

    @precondition(lambda self: self.holding())
    @rule(s=SESSION)
    @step
    def reset_data(self, s):
        """Reset the data connection of a held upload (SO_LINGER 0)."""
        sess = pick(self.holding(), s)
        upload, sess.upload = sess.upload, None
        reset(upload.sock)
        expect(sess.reply(), {"426"}, f"{sess.user} reset of {upload}")
        self._failed(upload)

    @precondition(lambda self: self.holding())
    @rule(s=SESSION)
    @step
    def reconnect(self, s):
        """Reset the control connection and the data connection of a held
        upload; log in again once the server has closed the session."""
        sess = pick(self.holding(), s)
        port = sess.ftp.sock.getsockname()[1]
        sess.close()
        deadline = time.monotonic() + SETTLE
        while self._server_has(port):
            assert time.monotonic() < deadline, "the server kept a reset session"
            time.sleep(0.001)
        self.sessions[self.sessions.index(sess)] = Session(self.server.port, sess.user)
        if sess.upload is not None:
            self._failed(sess.upload)

    def _server_has(self, port: int) -> bool:
        for channel in list(self.server.server.ioloop.socket_map.values()):
            control = getattr(channel, "cmd_channel", channel)
            if getattr(control, "remote_port", None) == port:
                return True
        return False

    def _send(self, sess: Session, size: int) -> None:
        upload = sess.upload
        size = min(size, STREAM - upload.sent)
        try:
            upload.sock.sendall(upload.data[upload.sent:upload.sent + size])
        except OSError:
            pass  # the server ended the upload: its reply says why
        upload.sent += size

    def _settle(self, sess: Session) -> None:
        """Wait until the server has taken every byte sent to ``sess``'s
        upload (or ended it). Other held uploads are asked too: one the
        server ended meanwhile must not count as running."""
        deadline = time.monotonic() + SETTLE
        while sess.upload is not None:
            status = {other: self._status(other) for other in self.holding()}
            if sess.upload is None:
                return
            received = re.search(r"Total bytes received: (\d+)", status[sess])
            taken = received is not None and int(received.group(1)) >= sess.upload.sent
            if taken and self._on_disk(sess.upload):
                return
            assert time.monotonic() < deadline, \
                f"{sess.upload}: the server took the bytes but they are not on disk as sent" if taken else \
                f"{sess.upload}: the server neither took nor refused them: {status[sess]!r}"
            time.sleep(0.002)

    def _status(self, sess: Session) -> str:
        """STAT of a session holding an upload; notes an end the server chose."""
        reply = sess.send("STAT")
        if not reply.startswith("211"):  # the server ended the upload on its own
            upload, sess.upload = sess.upload, None
            reset(upload.sock)
            expect(reply, {"552"}, f"{sess.user} {upload} ended by the server")
            reply = sess.reply()
            expect(reply, {"211"}, f"{sess.user} STAT")
            self._failed(upload)
        return reply

    def _on_disk(self, upload: Upload) -> bool:
        if upload.in_place:
            try:
                with open(self.real(upload.path), "rb") as f:
                    return f.read() == upload.result()
            except OSError:
                return False
        tree = tree_of(upload.path)
        sent = sum(u.sent for u in self.running() if not u.in_place and tree_of(u.path) == tree)
        return sum(size for t, size in self.temporaries().values() if t == tree) == sent

    def _finish(self, sess: Session, allowed: set[str]) -> None:
        """End a held upload: close its data connection (the end of the file), read the reply."""
        upload, sess.upload = sess.upload, None
        upload.sock.close()
        if expect(sess.reply(), allowed, f"{sess.user} end of {upload}") == "226":
            self.model[upload.path] = upload.result()
        else:
            self._failed(upload)

    def _failed(self, upload: Upload) -> None:
        """An upload that failed left nothing (atomic), or cut its file back
        to the old length (in place): what it overwrote inside stays."""
        if not upload.in_place:
            return
        deadline = time.monotonic() + SETTLE
        while True:
            try:
                with open(self.real(upload.path), "rb") as f:
                    got = f.read()
            except FileNotFoundError:
                got = None
            if got is not None and upload.extended(got, cut=True):
                self.model[upload.path] = got
                return
            assert time.monotonic() < deadline, \
                f"{upload.path}: {None if got is None else len(got)} bytes on disk after {upload} failed " \
                f"(it had {len(upload.old)})"
            time.sleep(0.002)

    # --- files and folders

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, where=FILE)
    @step
    def delete(self, s, where):
        sess = pick(self.idle(), s)
        path, rel = self.place(sess, where, self.known_files())
        if rel not in self.model:
            allowed = {"550"}
        elif self.written_in_place(rel):
            allowed = {"450"}
        elif self.busy(rel):  # the file an atomic upload will replace
            allowed = {"250", "450"}
        else:
            allowed = {"250"}
        if expect(sess.send(f"DELE {path}"), allowed, f"{sess.user} DELE {path}") == "250":
            del self.model[rel]

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, source=FILE, dest=FILE)
    @step
    def rename_file(self, s, source, dest):
        sess = pick(self.idle(), s)
        src_path, src = self.place(sess, source, self.known_files())
        dst_path, dst = self.place(sess, dest, self.known_files())
        if src == dst or self.written_in_place(dst) or (self.written_in_place(src) and self.busy(dst)):
            return  # renaming over a file being written: left open by the rules
        what = f"{sess.user} RNFR {src_path} RNTO {dst_path}"
        reply = sess.send(f"RNFR {src_path}")
        if src not in self.model:
            expect(reply, {"550"}, what)
            return
        expect(reply, {"350"}, what)
        target = tree_of(dst)
        across = tree_of(src) != target
        must, may = set(), set()  # refusals that apply; refusals that are allowed
        if not os.path.isdir(self.real(os.path.dirname(dst))):
            must.add("550")
        if across and self.written_in_place(src):
            must.add("450")
            may.add("552")  # its size grows while it is written
        if across and target in LIMITS:
            if self.running_in(target):
                may.add("552")  # room held by running uploads
            elif not self.fits(target, len(self.model[src]) - len(self.model.get(dst, b""))):
                must.add("552")
        if self.busy(src) or self.busy(dst):  # the name of an atomic upload
            may.add("450")
        allowed = must | may if must else {"250"} | may
        if expect(sess.send(f"RNTO {dst_path}"), allowed, what) == "250":
            self.model[dst] = self.model.pop(src)
            for upload in self.running():
                if upload.in_place and upload.path == src:
                    upload.path = dst

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, source=DIR, dest=DIR)
    @step
    def rename_folder(self, s, source, dest):
        sess = pick(self.idle(), s)
        src_path, src = self.place(sess, source, self.known_folders())
        dst_path, dst = self.place(sess, dest, self.known_folders())
        if src == dst or os.path.lexists(self.real(dst)):
            return  # replacing a folder: left open by the rules
        what = f"{sess.user} RNFR {src_path} RNTO {dst_path}"
        reply = sess.send(f"RNFR {src_path}")
        if not os.path.isdir(self.real(src)):
            expect(reply, {"550"}, what)
            return
        expect(reply, {"350"}, what)
        target = tree_of(dst)
        across = tree_of(src) != target
        must, may = set(), set()  # refusals that apply; refusals that are allowed
        if across and any(inside(u.path, src) for u in self.running()):
            must.add("450")
            may.add("552")
        if across and target in LIMITS:
            if self.running_in(target):
                may.add("552")
            elif not self.fits(target, sum(len(d) for rel, d in self.model.items() if inside(rel, src))):
                must.add("552")
        allowed = must | may if must else {"250"} | may
        if expect(sess.send(f"RNTO {dst_path}"), allowed, what) == "250":
            self.model = {(dst + rel[len(src):] if inside(rel, src) else rel): data
                          for rel, data in self.model.items()}
            for upload in self.running():
                if inside(upload.path, src):
                    upload.path = dst + upload.path[len(src):]

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, where=DIR)
    @step
    def make_folder(self, s, where):
        sess = pick(self.idle(), s)
        path, rel = self.place(sess, where, self.known_folders())
        allowed = {"550"} if os.path.lexists(self.real(rel)) else {"257"}
        expect(sess.send(f"MKD {path}"), allowed, f"{sess.user} MKD {path}")

    @precondition(lambda self: self.idle())
    @rule(s=SESSION, where=DIR)
    @step
    def remove_folder(self, s, where):
        sess = pick(self.idle(), s)
        path, rel = self.place(sess, where, self.known_folders())
        uploads = any(inside(u.path, rel) for u in self.running())
        if not os.path.isdir(self.real(rel)):
            allowed = {"550"}
        elif any(inside(f, rel) for f in self.model):
            allowed = {"550", "450"} if uploads else {"550"}
        else:
            allowed = {"450"} if uploads else {"250"}
        expect(sess.send(f"RMD {path}"), allowed, f"{sess.user} RMD {path}")

    # --- invariants

    def temporaries(self) -> dict[tuple[int, int], tuple[str, int]]:
        """Every upload temporary, by inode: (its tree, its size). Named ones
        anywhere under the root, and unnamed (O_TMPFILE) ones the server
        (in this process) holds open."""
        found = {}
        for path in temporaries(self.root):
            try:
                st = os.stat(path)
                found[st.st_dev, st.st_ino] = (tree_of(os.path.relpath(os.path.dirname(path), self.root)), st.st_size)
            except OSError:
                pass
        for fd in os.listdir("/proc/self/fd"):
            try:
                unnamed = re.fullmatch(r"(.*)/#\d+ \(deleted\)", os.readlink(f"/proc/self/fd/{fd}"))
                if unnamed and inside(unnamed.group(1), self.root):
                    st = os.stat(f"/proc/self/fd/{fd}")
                    found[st.st_dev, st.st_ino] = (tree_of(os.path.relpath(unnamed.group(1), self.root)), st.st_size)
            except OSError:
                pass
        return found

    @contextmanager
    def locked(self, tree: str):
        """Hold the tree's ledger lock, so no reservation changes while it is measured."""
        fd = None
        for name in ("ledger.lock", "ledger"):
            try:
                fd = os.open(os.path.join(self.real(tree), ".xxftp", name), os.O_RDONLY)
                break
            except FileNotFoundError:
                continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def ledger_used(self, tree: str) -> int | None:
        try:
            with open(os.path.join(self.real(tree), ".xxftp", "ledger")) as f:
                return json.load(f)["used"]
        except FileNotFoundError:
            return None  # not needed yet (it is built by a scan when it is)

    def files(self) -> dict[str, bytes]:
        found = {}
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                if not name.startswith("."):
                    with open(os.path.join(folder, name), "rb") as f:
                        found[os.path.relpath(os.path.join(folder, name), self.root)] = f.read()
        return found

    @invariant()
    @step
    def check(self):
        running = self.running()
        temps = self.temporaries()
        for tree, limit in LIMITS.items():
            with self.locked(tree):
                used = scan(self.real(tree), self.store)
                pending = sum(size for t, size in temps.values() if t == tree)
                assert used + pending <= limit, \
                    f"{tree}: {used} bytes of files and {pending} of temporaries pass the limit {limit}"
                if not running:
                    ledger = self.ledger_used(tree)
                    assert ledger is None or ledger == used, f"{tree}: ledger says {ledger} used, the scan {used}"
        if not running:
            assert not temps, f"temporaries left: {sorted(temps.values())}"
        disk = self.files()
        for rel, data in self.model.items():
            assert rel in disk, f"{rel} ({len(data)} bytes answered with 226) is gone"
            writer = next((u for u in running if u.in_place and u.path == rel), None)
            if writer is None:
                assert disk[rel] == data, f"{rel}: {len(disk[rel])} bytes on disk, not the {len(data)} expected"
            else:
                assert writer.extended(disk[rel]), f"{rel}: {len(disk[rel])} bytes on disk while {writer} writes it"
        extra = sorted(set(disk) - set(self.model))
        assert not extra, f"files no upload was answered 226 for: {extra}"


# Rounds after the first need fresh seeds (a CI profile may derandomize).
SETTINGS = settings(max_examples=EXAMPLES or 400, stateful_step_count=STEPS or 40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    **({"derandomize": False} if SECONDS else {}))


def test_quota_model():
    """Bounded in CI; XXFTPD_MODEL_SECONDS keeps starting new rounds (fresh seeds)."""
    deadline = time.monotonic() + SECONDS
    while True:
        run_state_machine_as_test(QuotaModel, settings=SETTINGS)
        if time.monotonic() >= deadline:
            break
