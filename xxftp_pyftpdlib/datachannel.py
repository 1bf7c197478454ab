"""The data channel: ends each upload with the right verdict and reply.

pyftpdlib's data channel turns every write error into ``426 None`` and
closes the file without saying whether the transfer succeeded. Here the
channel tells the ``Upload`` how the transfer ended (so it commits or
rolls back), answers 552 when a write would pass the quota, 452 when the
disk is full and 451 for other local errors, and adds the space left to
the 226 of an upload into a limited tree.

A transfer that moves no byte for ``timeout`` seconds (``--data-timeout``;
pyftpdlib checks once a period, so it ends between one and two periods
after its last byte) is aborted with ``426`` and the session goes on: the
client may try again at once. A data connection with no transfer on it is
closed as pyftpdlib does (``421``, the session ends).

``TYPE A`` converts line ends (CRLF on the wire, LF on the disk) only when
the session's ``ascii_mangling`` is on. Off (the default, like vsftpd and
Pure-FTPd), a file moves byte for byte whatever the TYPE: a client that
never sends ``TYPE I`` can't corrupt a binary upload, and a download in
TYPE A still uses ``sendfile``. Listings are always CRLF lines.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import threading
import time

from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import DTPHandler
from pyftpdlib.handlers.ftp.producers import FileProducer
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED

from . import limiting
from .quota import LEASE, Busy, QuotaExceeded, QuotaWait
from .uploads import BROKEN, ERROR, QUOTA, Refused, Upload

logger = logging.getLogger("pyftpdlib")


DATA_TIMEOUT = 300  # seconds a transfer may move no byte (pyftpdlib's DTPHandler.timeout)


def stalled_reply(seconds: float) -> str:
    return f"426 Data connection timed out: no data for {seconds:g} s; transfer aborted."


def error_reply(err: BaseException) -> str:
    """The reply for an error that stopped or failed an upload."""
    if isinstance(err, QuotaExceeded):
        return f"552 {err}; transfer aborted."
    if isinstance(err, Busy):
        return f"450 {err}; transfer aborted."
    if isinstance(err, Refused):
        return f"550 {err}; transfer aborted."
    code = {errno.EDQUOT: 552, errno.ENOSPC: 452, errno.EFBIG: 552}.get(getattr(err, "errno", None), 451)
    why = os.strerror(err.errno) if getattr(err, "errno", None) else str(err)
    return f"{code} {why}; transfer aborted."


class XxftpDTPMixin:
    """Upload verdicts and replies for a pyftpdlib data channel."""

    _why = BROKEN
    recv_buffer_size = 1024 * 1024  # bytes moved per read event: one buffer (or pipe) per thread
    quota_wait = 5.0  # seconds the oldest upload may wait for room held by others
    _wait_until = 0.0

    def handle_error(self) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, QuotaWait):
            self._pause_for_room()
            return
        if isinstance(err, _FileReadWriteError) and err.__cause__ is not None:
            err = err.__cause__
        if isinstance(err, (QuotaExceeded, Busy)) or (isinstance(err, OSError) and self._writing_failed(err)):
            self._why = QUOTA if isinstance(err, QuotaExceeded) else ERROR
            self._resp = (error_reply(err), logger.warning)
            self._close_safely()
            return
        # Anything else aborts the transfer as pyftpdlib's plain data channel
        # does (logged, 426), through this class's close(), so an upload gets
        # its verdict. pyftpdlib's TLS channel would close past it: no reply,
        # and the partial upload kept. A failed TLS session is not shut down.
        self._error = True
        DTPHandler.handle_error(self)

    def handle_timeout(self) -> None:
        if self.file_obj is None or self.get_transmitted_bytes() > self._lastdata:
            return super().handle_timeout()  # no transfer yet: pyftpdlib's 421; or progress: checked again
        self._why = BROKEN  # a stalled upload is rolled back like a broken one
        self._resp = (stalled_reply(self.timeout), logger.info)
        # closed just after this round of timers (the control connection stays): closing
        # now would cancel a timer of this channel already taken for the same round
        self.ioloop.call_later(0, self._close_safely, _errback=self.handle_error)
        return None

    # --- TYPE A: line ends converted only with ascii_mangling on

    def _converts(self) -> bool:
        return bool(getattr(self.cmd_channel, "ascii_mangling", True))

    def push_with_producer(self, producer) -> None:
        if type(producer) is FileProducer and not self._converts():
            producer._data_wrapper = None  # the file as it is, in any TYPE
        super().push_with_producer(producer)

    def use_sendfile(self) -> bool:
        channel = self.cmd_channel
        if self._converts() or channel._current_type == "i":
            return super().use_sendfile()
        channel._current_type = "i"  # pyftpdlib's own checks, for a file sent as it is
        try:
            return super().use_sendfile()
        finally:
            channel._current_type = "a"

    def _close_safely(self) -> None:
        """Close, never letting an error escape into the IO loop (it would stop the server)."""
        try:
            self.close()
        except Exception:
            logger.critical("closing a data channel failed", exc_info=True)

    def _pause_for_room(self) -> None:
        """Stop reading and try the held chunk again shortly (never blocks the loop)."""
        if not self._wait_until:
            self._wait_until = time.monotonic() + self.quota_wait
        self.del_channel()
        self.ioloop.call_later(0.02, self._retry_held, _errback=self.handle_error)

    def _retry_held(self) -> None:
        if self._closed:
            return
        try:
            self.file_obj.resume()
        except QuotaWait as err:
            if time.monotonic() < self._wait_until:
                self.ioloop.call_later(0.02, self._retry_held, _errback=self.handle_error)
                return
            self._fail(QUOTA, QuotaExceeded(err.limit, err.free, err.top, held=True))
            return
        except (QuotaExceeded, OSError) as err:
            self._fail(QUOTA if isinstance(err, QuotaExceeded) else ERROR, err)
            return
        self._wait_until = 0.0
        self.add_channel(events=self.ioloop.READ)

    def _fail(self, why: str, err: BaseException) -> None:
        self._why = why
        self._resp = (error_reply(err), logger.warning)
        self.add_channel(events=self.ioloop.READ)  # close() expects a registered channel
        self._close_safely()

    _lease_timer = None
    _lease_seen = -1

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type if self._converts() else "i", cmd)  # "i": stored as received
        if isinstance(self.file_obj, Upload):
            self._lease_seen = self.tot_bytes_received
            self._lease_timer = self.ioloop.call_later(LEASE, self._check_lease, _errback=self.handle_error)

    def _check_lease(self) -> None:
        """Every LEASE seconds: an upload that received nothing meanwhile
        gives back the room it holds ahead (it keeps what it wrote)."""
        upload = self.file_obj
        if self._closed or not isinstance(upload, Upload) or upload.closed:
            return
        if self.tot_bytes_received == self._lease_seen and not self._wait_until:
            upload.idle()
        self._lease_seen = self.tot_bytes_received
        self._lease_timer = self.ioloop.call_later(LEASE, self._check_lease, _errback=self.handle_error)

    # --- a user's rate (``limiting``): every read and write of a file transfer asks

    _pacer: limiting.Pacer | bool | None = None  # None: not looked for yet; False: not paced

    def _budget(self, wanted: int) -> int:
        """Bytes (up to ``wanted``) this transfer may move now; 0: it waits
        for its user's rate, out of the loop until its time comes."""
        pacer = self._pacer
        if pacer is None:
            pacer = self._pacer = limiting.pacer_for(self) or False
        return pacer.budget(wanted) if pacer else wanted

    def _moved(self, size: int) -> None:
        if self._pacer:
            self._pacer.moved(size)

    def _paced(self, send) -> None:
        """Send what the rate allows now (sendfile or pyftpdlib's send)."""
        if self._pacer is False:
            return send()
        budget = self._budget(type(self).ac_out_buffer_size)
        if not budget:
            return None
        self.ac_out_buffer_size = budget  # what sendfile and asynchat send at most in one call
        before = self.tot_bytes_sent
        try:
            return send()
        finally:
            self._moved(self.tot_bytes_sent - before)

    def initiate_sendfile(self) -> None:
        self._paced(super().initiate_sendfile)

    def initiate_send(self) -> None:
        self._paced(super().initiate_send)

    def _writing_failed(self, err: OSError) -> bool:
        # A write error of the file, as opposed to a socket error.
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES)

    def _read_clear(self) -> None:
        """Read what the socket holds into the upload (a plain TCP data channel)."""
        count = self._budget(self.recv_buffer_size)
        if not count:
            return None
        if self._data_wrapper is not None:  # ASCII mode converts line ends: pyftpdlib's way
            before = self.tot_bytes_received
            DTPHandler.handle_read(self)
            return self._moved(self.tot_bytes_received - before)
        upload = self.file_obj
        splicing = isinstance(upload, Upload) and upload.can_splice
        try:
            if splicing:
                pipe = _splice_pipe(self.recv_buffer_size)
                size = os.splice(self.socket.fileno(), pipe.w, count)
            else:
                buf = _recv_buffer(self.recv_buffer_size)
                size = self.socket.recv_into(buf, count)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:
            if err.errno in _ERRNOS_DISCONNECTED:
                return self._connection_lost(err.errno)
            raise
        if not size:  # the client's end of the upload
            self.handle_close()
            return None
        self.tot_bytes_received += size
        self._moved(size)
        try:
            if splicing:
                upload.write_from_pipe(pipe.r, size)
            else:
                upload.write(memoryview(buf)[:size])
        except OSError as err:
            raise _FileReadWriteError(err) from err
        return None

    def _connection_lost(self, code: int) -> None:
        # A reset is a broken upload, not its end (only an orderly close
        # ends a stream-mode upload): never commit it.
        self._why = BROKEN
        self._resp = (f"426 Connection lost ({os.strerror(code)}); transfer aborted.", logger.info)
        self._close_safely()

    def close(self) -> None:
        if self._pacer:
            self._pacer.close()
        if self._lease_timer is not None:
            if not self._lease_timer.cancelled:
                self._lease_timer.cancel()
            self._lease_timer = None
        upload = self.file_obj
        if not self._closed and self.receive and isinstance(upload, Upload) and not upload.closed:
            ok = bool(self.transfer_finished)
            try:
                note = upload.finish(ok, ERROR if ok else self._why)
            except (QuotaExceeded, Busy, Refused, OSError) as err:
                self.transfer_finished = False
                self._resp = (error_reply(err), logger.warning)
            else:
                if ok and note:
                    self._resp = (f"226 Transfer complete; {note}.", logger.debug)
                committed = getattr(self.cmd_channel, "on_upload_committed", None)
                if ok and committed is not None:
                    try:
                        committed(upload)
                    except Exception:  # a hook that can't be queued never costs the upload its reply
                        logger.exception("after the upload of %s", upload.name)
        super().close()


_local = threading.local()


def _recv_buffer(size: int) -> bytearray:
    """This thread's receive buffer. Each read is written out before the
    next one starts, so every upload of a thread (of the whole event loop)
    shares one buffer: 100 uploads touch 1 MiB, not 100 MiB."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) != size:
        buf = _local.buf = bytearray(size)
    return buf


class _Pipe:
    """A pipe that uploads are spliced through: socket -> pipe -> file.

    One per thread and process, shared like the receive buffer (it is
    empty between two reads); closed when its thread ends.
    """

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.r, self.w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, size)
        except OSError:  # over the system's or the user's pipe limits: the default size works too
            pass

    def __del__(self) -> None:
        if self.pid == os.getpid():
            os.close(self.r)
            os.close(self.w)


def _splice_pipe(size: int) -> _Pipe:
    pipe = getattr(_local, "pipe", None)
    if pipe is None or pipe.pid != os.getpid():  # a forked child must not share its parent's
        pipe = _local.pipe = _Pipe(size)
    return pipe


class XxftpDTPHandler(XxftpDTPMixin, DTPHandler):
    """pyftpdlib's DTPHandler with xxftpd upload verdicts and a leaner data path.

    Uploads move from the socket to the file with ``os.splice`` through a
    pipe (no copy through user memory; Linux), or else are received with
    ``recv_into`` into one reusable 1 MiB buffer per thread (pyftpdlib
    makes a new 64 KiB bytes object per read), and
    ``sendfile`` is asked to move up to 256 KiB per call instead of 64 KiB.
    Larger counts measured worse: at 4 MiB, 100 concurrent downloads took
    1.4x as long as with 64 KiB (bench/run.py, figure 8a).
    """

    ac_out_buffer_size = 256 * 1024  # the count pyftpdlib passes to sendfile

    handle_read = handle_read_event = XxftpDTPMixin._read_clear  # pyftpdlib binds the event by name
