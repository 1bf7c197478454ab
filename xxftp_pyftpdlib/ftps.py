"""FTPS adapters: implicit TLS, a second listening port, client certificates.

Rules that live here:

- Implicit FTPS: a connection speaks TLS from its first byte; the 220
  greeting is its first TLS record. Its data connections are protected
  from the start (``PBSZ 0`` and ``PROT P`` implied, again after ``REIN``),
  as implicit clients (curl's and lftp's ``ftps://``) expect. ``AUTH`` is
  ``503`` (TLS is on already), ``PBSZ``/``PROT`` answer as after
  ``AUTH TLS`` (``PROT C`` allowed unless data must be protected), ``CCC``
  is refused.
- Until its handshake is done a connection gets no reply: a refusal
  (limits, address, ban) or ``421`` in clear text would read as a broken
  TLS record, so it is closed with its log line only. A handshake that
  fails is closed at once, with one log line giving OpenSSL's reason; one
  that stalls is closed at ``--login-timeout`` (its place in the admission
  table counts from the connect, like any stranger's), or at ``--timeout``
  when there is no login timeout, with one line.
- A second port (``--implicit-port``) is a listener of the same server:
  same admission table, limits and counters, same handler settings and
  TLS context; with ``--workers`` each worker accepts on both sockets.
- Client certificates (``--tls-client-ca``): the server asks for one on
  the control connection and verifies it against that CA; a client may
  present none (then passwords as usual), but one it presents must verify
  or the handshake fails. Only the control connection's certificate
  counts (a data connection resumes the control connection's session, or
  has a context that asks for none). What a listed certificate allows is
  ``clientcerts``' business; at ``USER`` a certificate that logs the user
  in alone is answered ``232`` (RFC 2228/4217: logged in, authorized by
  security data exchange), and no ``PASS`` follows.

This module does not decide who may log in (``clientcerts``,
``authorizer``) nor how data connections are bound (``tlschannel``).
"""

from __future__ import annotations

import logging
import sys

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from pyftpdlib.authorizers import AuthenticationFailed
from pyftpdlib.ioloop import Acceptor

from . import clientcerts, tlschannel
from .accounts import canonical_name
from .listener import Listener

__all__ = ["CERTIFICATE_LOGIN", "ClientCertificates", "ImplicitListener", "ImplicitTLS", "ask_for_certificates",
           "implicit_handler", "with_client_certificates"]

logger = logging.getLogger("pyftpdlib")

CERTIFICATE_LOGIN = "User logged in, authorized by security data exchange."  # RFC 2228's 232


# --- implicit TLS


class ImplicitTLS:
    """Mixed before an ``XxftpTLSHandler``: TLS from the first byte."""

    tls_implicit = True

    def __init__(self, conn, server, ioloop=None) -> None:
        super().__init__(conn, server, ioloop)
        if self.connected:
            self._implied_protection()

    def _implied_protection(self) -> None:
        self._pbsz = self._prot = True

    def flush_account(self) -> None:  # REIN, or USER once logged in: back to the state after connect
        super().flush_account()
        self._implied_protection()

    def _may_reply(self) -> bool:
        return self._ssl_established

    def handle(self) -> None:
        """Start the handshake; the greeting comes once it is done."""
        self.secure_connection(self.ssl_context)

    def handle_ssl_established(self) -> None:
        super().handle_ssl_established()
        super().handle()  # on_connect and the 220 greeting, now inside TLS

    def handle_read_event(self) -> None:
        if self._ssl_accepting and self.place is not None and self.place.leaving:
            self.close()  # told to leave mid-handshake: close says why, once
            return
        super().handle_read_event()

    def handle_timeout(self) -> None:
        if self._ssl_established:
            super().handle_timeout()
            return
        self.log(f"closing: no TLS handshake within {self.timeout:g} s", logfun=logger.info)
        self.close()

    def handle_failed_ssl_handshake(self) -> None:
        _close_failed_handshake(self, sys.exc_info()[1])

    def handle_max_cons(self) -> None:
        self.log("closing: too many connections", logfun=logger.warning)
        self.close()

    def handle_max_cons_per_ip(self) -> None:
        self.log("closing: too many connections from the same IP address", logfun=logger.warning)
        self.close()


def implicit_handler(explicit: type) -> type:
    """The implicit-TLS twin of a configured ``XxftpTLSHandler`` class: same
    settings, authorizer, limits and TLS context."""
    context = explicit.get_ssl_context()  # made (and hardened) once, shared by both ports
    return type("Implicit" + explicit.__name__, (ImplicitTLS, explicit),
                {"ssl_context": context, "_hardened_context": context})


class ImplicitListener(Listener, Acceptor):
    """A second listening socket of ``server`` whose connections are
    served by ``handler`` (the implicit-TLS class) in every other respect
    as the server's own: its admission table, counters and serving model.
    """

    def __init__(self, server, address_or_socket, handler: type, backlog: int = 100) -> None:
        super().__init__(ioloop=server.ioloop)
        self.server = server
        self.handler = handler
        if callable(getattr(address_or_socket, "listen", None)):
            address_or_socket.setblocking(False)
            self.set_socket(address_or_socket)
        else:
            self.bind_af_unspecified(address_or_socket)
        self.listen(backlog)

    @property
    def address(self) -> tuple:
        return self.socket.getsockname()[:2]

    def handle_accepted(self, sock, addr) -> None:
        # pyftpdlib's servers build the handler from ``server.handler``:
        # lend it ours for this one call (accepting happens on the
        # server's own thread, and nothing else reads it meanwhile).
        server = self.server
        own, server.handler = server.handler, self.handler
        try:
            server.handle_accepted(sock, addr)
        finally:
            server.handler = own

    def serving(self, server) -> "ImplicitListener":
        """The same socket, accepting for ``server`` (a forked worker's)."""
        return type(self)(server, self.socket, self.handler)


# --- client certificates


# OpenSSL's X509_V_ERR_* codes a client certificate most often fails with
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate", 9: "certificate is not yet valid", 10: "certificate has expired",
    18: "self-signed certificate", 19: "self-signed certificate in chain",
    20: "not signed by the client CA (unable to get local issuer certificate)",
    21: "unable to verify the first certificate", 24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _note_verify_failure(conn: SSL.Connection, cert, errnum: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict, kept as it is; a failure is noted on the connection
    for the log line of the failed handshake (OpenSSL's own says only
    "certificate verify failed")."""
    if not ok and conn.get_app_data() is None:
        names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME) if cert else []
        subject = names[0].value if names else None
        conn.set_app_data(f"{_VERIFY_ERRORS.get(errnum, f'X509 error {errnum}')} "
                          f"(depth {depth}{f', CN={subject!r}' if subject else ''})")
    return bool(ok)


def _verify_failure(conn) -> str:
    try:
        noted = conn.get_app_data()
    except Exception:
        return ""
    return f": {noted}" if isinstance(noted, str) else ""


def ask_for_certificates(context: SSL.Context, cafile: str) -> None:
    """Ask clients for a certificate signed by ``cafile``'s CA (optional,
    but one presented must verify)."""
    context.load_verify_locations(cafile)
    context.load_client_ca(cafile.encode())
    context.set_verify(SSL.VERIFY_PEER, _note_verify_failure)
    context.set_session_id(b"xxftpd")  # OpenSSL refuses to resume a verified session without one


class ClientCertificates:
    """Mixed before an ``XxftpTLSHandler``: ``tls_client_ca`` asks for
    client certificates, and one listed in ``.xxftp/certs`` logs in."""

    tls_client_ca: str | None = None
    _certificate_reply = False

    @classmethod
    def get_ssl_context(cls):
        context = super().get_ssl_context()
        if cls.tls_client_ca and getattr(cls, "_asking_context", None) is not context:
            ask_for_certificates(context, cls.tls_client_ca)
            cls._asking_context = context
        return context

    _fingerprint: bytes | None = None

    def client_fingerprint(self) -> bytes | None:
        """SHA-256 of the certificate the control connection presented (and
        the CA verified), or None. Read at USER, on the loop's thread, and
        kept: the password check asks again from a worker thread, and a
        pyOpenSSL connection must not be used by two threads at once."""
        return self._fingerprint

    def _read_fingerprint(self) -> bytes | None:
        conn = self.socket
        if not self._ssl_established or not isinstance(conn, SSL.Connection):
            return None
        cert = conn.get_peer_certificate()
        if cert is None:
            return None
        return clientcerts.fingerprint(cert.to_cryptography().public_bytes(Encoding.DER))

    def ftp_USER(self, line: str) -> None:
        self._fingerprint = self._read_fingerprint()
        login = getattr(self.authorizer, "certificate_login", None)
        if login is None or self.client_fingerprint() is None:
            super().ftp_USER(line)
            return
        name = canonical_name(line)
        try:
            verdict = login(name, self)
        except AuthenticationFailed as err:
            if self.authenticated:
                self.flush_account()
            self.username = name
            self.handle_auth_failed(str(err), "")
            return
        if verdict is None:  # the certificate does not log this user in alone
            super().ftp_USER(line)
            return
        if self.authenticated:
            self.flush_account()
        self.username = name
        self._certificate_reply = True
        try:
            self.handle_auth_success(verdict[0], "", CERTIFICATE_LOGIN)
        finally:
            self._certificate_reply = False

    def respond(self, resp: str, logfun=None) -> None:
        if self._certificate_reply and resp.startswith("230 "):
            resp = "232 " + resp[4:]
        if logfun is None:
            super().respond(resp)
        else:
            super().respond(resp, logfun=logfun)

    def handle_failed_ssl_handshake(self) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, SSL.Error):
            super().handle_failed_ssl_handshake()
            return
        _close_failed_handshake(self, err)


def _close_failed_handshake(session, err: BaseException | None) -> None:
    """One log line saying why (OpenSSL's reason, the certificate's fault), then the close."""
    why = tlschannel.error_text(err) if isinstance(err, SSL.Error) else "failed"
    session.log(f"closing: TLS handshake failed: {why}{_verify_failure(session.socket)}", logfun=logger.info)
    session.close()


def with_client_certificates(handler: type, cafile: str) -> type:
    """``handler`` asking for client certificates signed by ``cafile``."""
    return type(handler.__name__, (ClientCertificates, handler), {"tls_client_ca": cafile})
