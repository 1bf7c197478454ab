"""The passive data listener: which connection becomes a session's data connection.

Rules that live here:

- A passive port comes from ``--passive-ports`` when that is set, and from
  nowhere else: when every port of the range is taken the command gets 425
  and the log says so (pyftpdlib falls back to a port the kernel picks,
  which a firewall opened for the range then blocks).
- Running out of descriptors (EMFILE, ENFILE) while opening a listener, or
  while accepting on it, answers 425 and the session goes on.
- Only a connection from the control connection's address may become the
  data connection (compared as ``addresses.plain`` writes them: an IPv4
  client of a dual-stack server listens on its mapped address) (unless foreign addresses are permitted). Any other is
  closed and logged, never answered on the control connection: a reply the
  client did not ask for puts it out of step with the server.
- Clear data: the first connection from that address is taken and the
  listener closes at once; a later one finds the port closed. A stranger on
  the same address (a shared host, one NAT) who connects first still gets
  the data: only TLS with session reuse tells the two apart.
- Protected data (PROT P) with session reuse required: a connection
  becomes the data connection only once its TLS handshake has resumed the
  control connection's session. Until then the listener stays open, so a
  stranger racing for the port gets nothing and does not lock the client
  out; at most ``PENDING`` handshakes are under way at a time.
- The listener lives ``WINDOW`` seconds. If no data connection came by
  then, a transfer command waiting for it gets 425; otherwise the expiry is
  only logged.

This module does not know how a TLS session is compared (tlschannel) nor
how a transfer runs (datachannel).
"""

from __future__ import annotations

import errno
import logging
import socket

from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP

from .addresses import plain

logger = logging.getLogger("pyftpdlib")

__all__ = ["DEFAULT_SESSION_REUSE", "NOT_RESUMED", "PENDING", "SESSION_REUSE", "WINDOW", "NO_DESCRIPTORS",
           "PassiveUnavailable", "XxftpPassiveDTP", "may_connect"]

SESSION_REUSE = ("required", "off")  # --tls-session-reuse: must a protected data connection resume?
DEFAULT_SESSION_REUSE = "required"
NOT_RESUMED = "522 Data connection must resume the TLS session of the control connection."
WINDOW = 30  # seconds a passive listener waits for its data connection
PENDING = 4  # TLS handshakes that may compete for one passive port at once
NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class PassiveUnavailable(Exception):
    """No passive listener could be opened; the text is for the 425 reply."""


def may_connect(control_ip: str, peer_ip: str, foreign_permitted: bool) -> bool:
    """Whether a connection from ``peer_ip`` may become the data connection
    of a session whose control connection comes from ``control_ip``."""
    return foreign_permitted or plain(peer_ip) == plain(control_ip)


class XxftpPassiveDTP(PassiveDTP):
    """pyftpdlib's PassiveDTP held to the rules above."""

    timeout = WINDOW
    _range_tries = 0
    _in_range = False
    _pending: set

    def __init__(self, cmd_channel, extmode: bool = False) -> None:
        self._pending = set()
        try:
            super().__init__(cmd_channel, extmode)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """Close a listener that failed half-way (never raises)."""
        try:
            if self.socket is not None:
                self.close()
        except Exception:
            logger.debug("closing a failed passive listener", exc_info=True)

    # --- the port range

    def bind(self, addr) -> None:
        ports = self.cmd_channel.passive_ports
        if ports is not None and addr[1] == 0 and self._range_tries:
            # pyftpdlib's fallback once every port of the range was in use
            raise PassiveUnavailable("no free port in the passive port range")
        if ports is not None and addr[1] != 0:
            self._range_tries += 1
        if self.socket.family == socket.AF_INET6 and addr[0].startswith("::ffff:"):
            # an IPv4 client of a dual-stack server: its listener must take IPv4
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().bind(addr)
        if ports is not None and addr[1] in ports:
            self._in_range = True

    def listen(self, num: int) -> None:
        if self.cmd_channel.passive_ports is not None and not self._in_range:
            # every port of the range refused (EPERM): listen() would take any port
            raise PassiveUnavailable("no usable port in the passive port range")
        super().listen(num)

    # --- who may connect

    def handle_accept(self) -> None:
        try:
            super().handle_accept()
        except OSError as err:
            if err.errno not in NO_DESCRIPTORS:
                raise
            self.cmd_channel.log(f"cannot accept a data connection: {err.strerror}", logfun=logger.warning)
            self._forget()
            self.cmd_channel.passive_failed(f"425 Can't open data connection: {err.strerror}.")

    def handle_accepted(self, sock, addr) -> None:
        channel = self.cmd_channel
        if not channel.connected:
            sock.close()
            self.close()
            return
        if not may_connect(channel.remote_ip, addr[0], channel.permit_foreign_addresses):
            sock.close()
            channel.log(f"data connection from foreign address {addr[0]}:{addr[1]} refused",
                        logfun=logger.warning)
            return
        if not getattr(channel, "data_needs_resumption", lambda: False)():
            super().handle_accepted(sock, (plain(addr[0]), *addr[1:]))  # the first one is taken; the listener closes
            return
        if len(self._pending) >= PENDING:
            sock.close()
            channel.log(f"data connection from {addr[0]}:{addr[1]} refused: "
                        f"{PENDING} TLS handshakes already compete for the port", logfun=logger.warning)
            return
        handler = channel.dtp_handler(sock, channel)
        if handler.connected:
            handler.on_probation(self)
            self._pending.add(handler)

    def release(self, handler) -> None:
        """``handler`` no longer competes for the port (it closed)."""
        self._pending.discard(handler)

    def refused(self, reply: str) -> None:
        """A contender failed to resume the control connection's session.
        A transfer command already waiting gets ``reply`` at once (most
        often the client itself cannot resume) and the listener closes;
        otherwise it waits on for the client."""
        channel = self.cmd_channel
        if channel.connected and channel.passive_failed(reply):
            self._forget()

    def _forget(self) -> None:
        channel = self.cmd_channel
        if getattr(channel, "_dtp_acceptor", None) is self:
            channel._dtp_acceptor = None
        self.close()

    def prove(self, handler) -> None:
        """``handler`` resumed the control connection's TLS session: it
        becomes the data connection; the listener and every other
        contender close."""
        self._pending.discard(handler)
        channel = self.cmd_channel
        if not channel.connected:
            handler.close()
            return
        channel.data_channel = handler
        channel._on_dtp_connection()  # closes this listener, so the others too

    def handle_timeout(self) -> None:
        channel = self.cmd_channel
        self._forget()
        if channel.connected:
            channel.log(f"passive data channel timed out after {self.timeout:g} s", logfun=logger.info)
            channel.passive_failed(f"425 No data connection came within {self.timeout:g} s.")

    def close(self) -> None:
        pending, self._pending = self._pending, set()
        for handler in pending:
            handler.close()
        super().close()
