"""The serving side of ``xxftpd who``: each process's status socket.

Rules that live here (where the state lives and what it looks like are
``who``'s rules):

- Every session of a handler that knows its root enters that root's
  board when it is made and leaves it when it closes (``Watched``); it
  notes its current command line and when it last did something. That is
  all it does on its own path: nothing per byte (a transfer's progress is
  read, when asked, from the counters its data channel keeps anyway).
- A process answers ``who`` only once it publishes the board
  (``publish``): the server at start, each ``--workers`` worker and each
  ``multi-proc`` session process in its own turn. A server built for a
  test or a script (no ``serve``) leaves the tree alone.
- The socket is served by a thread of its own that waits in ``accept``:
  no cost while nobody asks, and an answer never waits for the IO loop,
  nor does the loop wait for it (the thread reads the sessions' fields as
  they are; a field read mid-change is off by one command, no more). It
  answers only a reader running as its own user or as root
  (``SO_PEERCRED``), reads nothing, sends one answer and closes.
- A forked child closes the socket it inherited (without removing it):
  the parent's socket must refuse connections once the parent is gone,
  whatever children live on. The child forgets the parent's sessions.
- ``withdraw`` removes this process's socket (a clean stop); what a killed
  process left is removed by whoever meets it (``who.sweep``).

What this module must not know: the state folder's rules, the answer's
format (``who``), FTP commands beyond the names of the transfer ones.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import struct
import threading
import time

from . import who

__all__ = ["Watched", "publish", "withdraw", "adopt", "board_of"]

log = logging.getLogger("xxftpd")

SEND_TIMEOUT = 2.0  # seconds a reader may take to read an answer
YIELD_EVERY = 32  # sessions described between two chances for the IO loop to run
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
LISTINGS = {"LIST", "NLST", "MLSD"}
PATH_COMMANDS = {"RETR", "STOR", "APPE", "STOU"} | LISTINGS


class Board:
    """The sessions of one root in this process, and its status socket."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sessions: dict[int, Watched] = {}  # changed whole entries only: a copy is atomic
        self.listener: _Listener | None = None

    def snapshot(self) -> bytes:
        """The answer, built on the status thread. It lets the IO loop's
        thread run between every ``YIELD_EVERY`` sessions: a thread that
        wants Python's lock otherwise waits for the holder to block or for
        the 5 ms switch interval."""
        now = time.monotonic()
        records = []
        for number, session in enumerate(list(self.sessions.copy().values()), 1):
            try:
                records.append(session.status_record(now))
            except Exception:  # a session closing under our feet: leave it out this time
                continue
            if number % YIELD_EVERY == 0:
                time.sleep(0)
        return who.answer(os.getpid(), self.root, records)


_boards: dict[str, Board] = {}
_boards_lock = threading.Lock()
_ids = itertools.count(1)


def board_of(root: str) -> Board:
    with _boards_lock:
        board = _boards.get(root)
        if board is None:
            board = _boards[root] = Board(root)
        return board


class _Listener:
    """This process's socket in the state folder and the thread serving it."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.pid = os.getpid()
        self.name = f"{self.pid}.sock"
        self.dir_fd = who.open_state(board.root, create=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        binding = f".{self.pid}-{secrets.token_hex(4)}.bind"
        try:
            self.sock.bind(who.in_folder(self.dir_fd, binding))
            try:
                self.ino = os.stat(binding, dir_fd=self.dir_fd, follow_symlinks=False).st_ino
                self.sock.listen(64)
                os.rename(binding, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                os.unlink(binding, dir_fd=self.dir_fd)
                raise
        except BaseException:
            self.sock.close()
            os.close(self.dir_fd)
            raise
        self.thread = threading.Thread(target=self._serve, name="xxftpd-status", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        uids = {os.geteuid(), 0}
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: this process stops answering
            with conn:
                try:
                    pid, uid, gid = _CREDENTIALS.unpack(
                        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
                    if uid not in uids:
                        continue
                    conn.settimeout(SEND_TIMEOUT)
                    conn.sendall(self.board.snapshot())
                except OSError:
                    continue  # the reader went away or read too slowly
                except Exception:
                    log.exception("status answer failed")

    def close(self) -> None:
        """Stop answering and remove the socket's name; in a forked child
        only close the inherited descriptors (the socket is the parent's)."""
        if os.getpid() == self.pid:
            try:
                if os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False).st_ino == self.ino:
                    os.unlink(self.name, dir_fd=self.dir_fd)
            except OSError:
                pass
        if os.getpid() == self.pid:  # a shutdown reaches every copy: never in a forked child
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept
            except OSError:
                pass
        self.sock.close()
        os.close(self.dir_fd)


def publish(root: str) -> bool:
    """Answer ``who`` for ``root`` from this process (once per process);
    False, with one warning, if the state folder can't be used."""
    board = board_of(root)
    if board.listener is not None and board.listener.pid == os.getpid():
        return True
    try:
        board.listener = _Listener(board)
    except who.UnsafeState as err:
        log.warning("`xxftpd who` will not see this server: %s", err)
        return False
    except OSError as err:
        log.warning("`xxftpd who` will not see this server: %s: %s", who.state_path(root), err.strerror or err)
        return False
    return True


def withdraw(root: str, sweep: bool = False) -> None:
    """Stop answering for ``root`` and remove this process's socket;
    ``sweep`` what dead processes left too (a server's last step)."""
    board = _boards.get(root)
    listener = board.listener if board is not None else None
    if listener is not None and listener.pid == os.getpid():
        board.listener = None
        listener.close()
    if sweep and listener is not None:
        who.sweep(root)


def adopt(session) -> str | None:
    """In a process made for one session (``multi-proc``): answer for it;
    the root it answers for (None: a handler that knows no root)."""
    status_root = getattr(session, "status_root", None)
    root = status_root() if status_root is not None else None
    if root is not None:
        board_of(root).sessions[session.status_id] = session
        publish(root)
    return root


def _after_fork_in_child() -> None:
    for board in list(_boards.values()):
        listener, board.listener = board.listener, None
        board.sessions = {}
        if listener is not None:
            try:
                listener.close()
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)


class Watched:
    """A pyftpdlib handler on a board: what ``who`` shows of it.

    Mixed into the session class before pyftpdlib's handler; every
    override calls on.
    """

    status_id = 0
    _status_line = ""
    _status_path = ""
    _status_rest = 0
    _status_since = 0.0
    _status_active = 0.0

    def __init__(self, conn, server, ioloop=None) -> None:
        super().__init__(conn, server, ioloop)
        self.status_id = next(_ids)
        self._status_since = time.time()
        self._status_active = time.monotonic()
        root = self.status_root()
        if root is not None and self.connected:
            board_of(root).sessions[self.status_id] = self

    def status_root(self) -> str | None:
        return getattr(self.authorizer, "root", None)

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        self._status_line = who.shown_command(line)
        self._status_active = time.monotonic()
        super().pre_process_command(line, cmd, arg)

    def process_command(self, cmd: str, *args, **kwargs) -> None:
        if cmd in PATH_COMMANDS and self.fs is not None:
            try:  # pyftpdlib hands these a real path (STOU: what the client sent)
                self._status_path = self.fs.fs2ftp(args[0]) if cmd != "STOU" else self.fs.cwd
            except Exception:
                self._status_path = ""
            self._status_rest = self._restart_position if cmd == "RETR" else 0
        super().process_command(cmd, *args, **kwargs)

    _status_user: str | None = None

    def handle_auth_success(self, home: str, password: str, msg_login: str) -> None:
        # pyftpdlib sends the 230 before it marks the session logged in: a
        # client that has its 230 must find itself logged in.
        self._status_user = self.username
        super().handle_auth_success(home, password, msg_login)

    def flush_account(self) -> None:
        self._status_user = None
        super().flush_account()

    def _transfer_ended(self) -> None:
        self._status_active = time.monotonic()

    def on_file_sent(self, file) -> None:
        self._transfer_ended()
        super().on_file_sent(file)

    def on_file_received(self, file) -> None:
        self._transfer_ended()
        super().on_file_received(file)

    def on_incomplete_file_sent(self, file) -> None:
        self._transfer_ended()
        super().on_incomplete_file_sent(file)

    def on_incomplete_file_received(self, file) -> None:
        self._transfer_ended()
        super().on_incomplete_file_received(file)

    def close(self) -> None:
        root = self.status_root()
        if root is not None:
            board = _boards.get(root)
            if board is not None:
                board.sessions.pop(self.status_id, None)
        super().close()

    # read by the status thread

    def _status_transfer(self) -> dict | None:
        channel = self.data_channel
        if channel is None:
            return None
        file = channel.file_obj
        if channel.receive:
            direction = "upload"
            done = channel.tot_bytes_received
        elif channel.cmd in LISTINGS:
            direction, done = "listing", channel.tot_bytes_sent
        elif channel.cmd == "RETR" or file is not None:
            direction, done = "download", channel.tot_bytes_sent
        else:
            return None  # connected, nothing asked of it yet
        path = self._status_path
        if direction == "upload" and file is not None and self.fs is not None:
            try:
                path = self.fs.fs2ftp(file.name)  # STOU's unique name, known once it opened
            except Exception:
                pass
        size = None
        if direction == "download" and file is not None:
            try:
                size = max(0, os.fstat(file.fileno()).st_size - self._status_rest)
            except (OSError, ValueError):
                size = None
        return who.transfer_record(direction, path, done, size, channel.get_elapsed_time())

    def status_record(self, now: float) -> dict:
        """What ``who`` shows of this session (``now``: ``time.monotonic()``)."""
        return who.record(os.getpid(), self.status_id, self._status_user,
                          self.remote_ip, self.remote_port, self._status_since, now - self._status_active,
                          self._status_line, self._status_transfer())
