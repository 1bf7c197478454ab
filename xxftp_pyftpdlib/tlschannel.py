"""The FTPS data channel: TLS records moved in batches.

Rules that live here:

- Data connections speak TLS 1.2 without session tickets. Under TLS 1.3
  the server sends tickets after the handshake; a client that only writes
  (an upload) never reads them, and when it closes right after its last
  byte (lftp does) its kernel answers the unread tickets with a reset,
  which makes the server's kernel drop the tail of the upload not read yet.
- An upload takes every record the socket holds (up to 1 MiB) in one read
  event and writes them to the file with one call. pyftpdlib reads one
  16 KiB record per event and writes each to the file on its own.
- A download reads 256 KiB of the file into the channel's own buffer and
  hands it to one TLS write (16 records); pyftpdlib reads 64 KiB at a time
  and copies what the socket did not take.
- A reset during an upload is a broken upload, never committed, as on a
  clear channel. A close without TLS close_notify still ends it, as in
  pyftpdlib: many clients close that way.
- Clear data (PROT C) takes the clear channel's path (splice, sendfile);
  ASCII mode and listings take pyftpdlib's.
- Session reuse ``required`` (the default): a protected data connection
  must resume the TLS session of its control connection (the same master
  secret), or it is refused; a stranger who connects to the passive port
  first cannot complete such a handshake. Control and data connections
  then share one context and speak TLS 1.2: a TLS 1.3 session is resumed
  through a ticket the server must send after each data handshake (the
  reset above), and OpenSSL's ticket count is out of pyOpenSSL's reach.
  ``off``: data connections use their own context (no tickets) and any
  TLS session, as pyftpdlib does.
- Renegotiation is refused on every connection (TLS 1.2 and older).
"""

from __future__ import annotations

import hmac
import logging

from OpenSSL import SSL
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import TLS_DTPHandler
from pyftpdlib.handlers.ftp.producers import FileProducer
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED, AsyncChat

from .datachannel import XxftpDTPHandler, XxftpDTPMixin, _recv_buffer
from .passive import NOT_RESUMED
from .uploads import Upload

logger = logging.getLogger("pyftpdlib")

RECORD = 16 * 1024  # the most plaintext one TLS record carries
SEND_CHUNK = 256 * 1024  # file bytes per TLS write of a download


class XxftpTLSDTPHandler(XxftpDTPMixin, TLS_DTPHandler):
    """pyftpdlib's TLS_DTPHandler with xxftpd upload verdicts and batched records."""

    ac_out_buffer_size = XxftpDTPHandler.ac_out_buffer_size  # sendfile's count under PROT C
    _source = None  # the file a TLS download reads, once it has started
    _ended = False  # the client has closed its end of a TLS upload
    _out: memoryview | None = None
    _out_pos = _out_end = 0

    _acceptor = None  # the passive listener, while this connection competes for its port

    def secure_connection(self, ssl_context) -> None:
        super().secure_connection(_data_context(type(self.cmd_channel)))

    # --- whose data connection this is

    def on_probation(self, acceptor) -> None:
        """This connection becomes the data connection only if its
        handshake resumes the control connection's session (``acceptor``
        decides); until then it is nobody's and closes quietly."""
        self._acceptor = acceptor

    def handle_ssl_established(self) -> None:
        channel = self.cmd_channel
        if channel.data_needs_resumption() and not same_session(channel.socket, self.socket):
            peer = _peer(self.socket)
            channel.log(f"data connection from {peer} refused: it did not resume the control "
                        "connection's TLS session", logfun=logger.warning)
            acceptor, self._error = self._acceptor, True
            if acceptor is not None:
                self.close()  # quietly: the listener waits on for the client
                acceptor.refused(NOT_RESUMED)
            else:  # an active (PORT) connection: its transfer fails
                if self.file_obj is not None or self.cmd is not None:
                    self._resp = (NOT_RESUMED, logger.warning)
                self.close()
            return
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.prove(self)

    def handle_failed_ssl_handshake(self) -> None:
        if self._acceptor is None:
            return super().handle_failed_ssl_handshake()
        self.log("TLS handshake of a competing data connection failed.")
        self.close()
        return None

    def handle_timeout(self) -> None:
        if self._acceptor is None:
            return super().handle_timeout()
        self.close()
        return None

    # --- uploads

    def handle_read_event(self) -> None:
        if not self._ssl_requested:
            return self._read_clear()
        if (self._ssl_accepting or self._ssl_closing or self._data_wrapper is not None
                or not isinstance(self.file_obj, Upload)):
            return super().handle_read_event()
        if self._ended:  # seen before a chunk had to wait for quota room
            return self.handle_close()
        with self._handle_ssl_want_rw():
            self._ssl_want_read = False
            self._read_records()
        return None

    def _read_records(self) -> None:
        """Decrypt every record waiting (up to the buffer) and write them at once.

        Each read leaves room for a whole record, so none is left half
        read inside OpenSSL, where the loop would not see it.
        """
        conn = self.socket
        buf = _recv_buffer(self.recv_buffer_size)
        limit = self._budget(len(buf))  # a user's rate (``limiting``)
        if not limit:
            return None
        view = memoryview(buf)
        last = max(limit - RECORD, 0)
        got = 0
        try:
            while got <= last:
                got += conn.recv_into(view[got:got + RECORD])
        except SSL.WantReadError:  # the socket is empty: the usual way out
            pass
        except SSL.WantWriteError:
            self._ssl_want_write = True
        except SSL.ZeroReturnError:  # close_notify
            self._ended = True
        except SSL.SysCallError as err:
            code, text = err.args
            if code in _ERRNOS_DISCONNECTED:
                return self._connection_lost(code)
            if text != "Unexpected EOF":
                raise
            self._ended = True  # closed without close_notify
        if got:
            self.tot_bytes_received += got
            self._moved(got)
            try:
                self.file_obj.write(view[:got])
            except OSError as err:
                raise _FileReadWriteError(err) from err
        if self._ended:
            self.handle_close()
        return None

    # --- downloads

    def push_with_producer(self, producer) -> None:
        source = getattr(producer, "file", None)
        if (not self._ssl_requested or type(producer) is not FileProducer
                or producer._data_wrapper is not None or not hasattr(source, "readinto")):
            return super().push_with_producer(producer)
        self._initialized = True
        self._source = source
        self._out = memoryview(bytearray(SEND_CHUNK))
        self.producer_fifo.append(producer)  # "not finished" until the file is sent
        self.modify_ioloop_events(self.ioloop.WRITE)
        self._wanted_io_events = self.ioloop.WRITE
        self.initiate_send()
        return None

    def initiate_send(self) -> None:
        if self._source is None:
            return super().initiate_send()
        if self._ssl_accepting or self._closed:
            return None  # the write event after the handshake starts it
        if not self._budget(SEND_CHUNK):  # a user's rate (``limiting``)
            return None
        conn = self.socket
        try:
            if self._out_pos == self._out_end:
                self._out_pos, self._out_end = 0, self._source.readinto(self._out)
                if not self._out_end:
                    self.discard_buffers()  # the whole file went out
                    return self.handle_close()
            while self._out_pos < self._out_end:
                # The connection itself, not pyftpdlib's send(), which copies
                # a memoryview into bytes first (a copy of every byte sent).
                sent = conn.send(self._out[self._out_pos:self._out_end])
                self._out_pos += sent
                self.tot_bytes_sent += sent
                self._moved(sent)
        except SSL.WantWriteError:  # the socket is full: the usual way out
            pass
        except SSL.WantReadError:
            self._ssl_want_read = True
        except SSL.ZeroReturnError:
            self.handle_close()  # the file is still queued: 426
        except SSL.SysCallError as err:
            code, text = err.args
            if code in _ERRNOS_DISCONNECTED or text == "Unexpected EOF":
                self.handle_close()
            else:
                raise
        return None

    def close(self) -> None:
        self._source = self._out = None
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is None:
            super().close()
            return
        # Nobody's data connection yet: close the socket only; the session's
        # data channel, transfer and timers are not this one's.
        acceptor.release(self)
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()
        AsyncChat.close(self)


def _peer(conn) -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def error_text(err: SSL.Error) -> str:
    """The reasons OpenSSL gave, in one line ("tls alert handshake failure")."""
    reasons = [entry[2] for entry in (err.args[0] if err.args and isinstance(err.args[0], list) else [])
               if isinstance(entry, tuple) and len(entry) == 3]
    return "; ".join(r for r in reasons if r) or repr(err)


def same_session(control: SSL.Connection, data: SSL.Connection) -> bool:
    """Whether ``data`` resumed the TLS session of ``control``: a full
    handshake makes a new master secret, a resumption keeps it (TLS 1.2)."""
    mine, theirs = control.master_key(), data.master_key()
    return bool(mine) and bool(theirs) and hmac.compare_digest(mine, theirs)


def harden(context: SSL.Context, reuse: str) -> None:
    """Settings of the control connections' context (applied once, when it is made)."""
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    if reuse == "required":
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_session_id(b"xxftpd")
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)


def _data_context(handler: type) -> SSL.Context:
    """The handler class's TLS context for data connections (made once)."""
    context = handler.__dict__.get("_data_ssl_context")
    if context is None:
        control = handler.get_ssl_context()  # validates certfile/keyfile as pyftpdlib does
        if not handler.certfile or getattr(handler, "tls_session_reuse", "off") == "required":
            # a ready-made ssl_context is used as it is; reuse needs the control's session cache
            return control
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_options((handler.ssl_options or 0) | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        context.use_certificate_chain_file(handler.certfile)
        context.use_privatekey_file(handler.keyfile or handler.certfile)
        handler._data_ssl_context = context
    return context
