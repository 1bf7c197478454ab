"""XxftpAuthorizer: pyftpdlib's authorizer interface over ``accounts``.

Users are the folders of the server root; there is no user table to keep
in step. Tree permissions (``.xxftp/permission``, mount lines) are
enforced by ``XxftpFS`` on every operation, so this authorizer grants all
pyftpdlib permission letters to every user it lets in.
"""

from __future__ import annotations

import logging

from pyftpdlib.authorizers import AuthenticationFailed, AuthorizerError

from . import access, banners, clientcerts
from .accounts import Accounts, Login
from .config import shared_store

log = logging.getLogger("xxftpd.auth")


class XxftpAuthorizer:
    """Authorizes the users of an xxftp server root."""

    read_perms = "elr"
    write_perms = "adfmwMT"

    def __init__(self, root: str, perm: str = "elradfmwMT", upgrade_hashes: bool = False) -> None:
        self.accounts = Accounts(root, upgrade_hashes)
        self.root = self.accounts.root
        self.perm = perm

    # --- login

    def needs_password(self, username: str) -> bool:
        """False if USER alone logs ``username`` in (a home without password)."""
        return self.accounts.needs_password(username)

    def validate_authentication(self, username: str, password: str, handler) -> None:
        self.check_login(username, password, handler)

    def open_login(self, username: str, handler) -> tuple[str, str] | None:
        """``check_login`` for a login that needs no password (decided at
        once, on the event loop); None if a password must be checked: run
        ``check_login`` in a worker thread."""
        result = self.accounts.open_login(username)
        return None if result is None else self._verdict(username, result, handler)

    def check_login(self, username: str, password: str, handler) -> tuple[str, str]:
        """``validate_authentication``, ``get_home_dir`` and ``get_msg_login``
        in one pass: (home, login message), or AuthenticationFailed. Takes
        one modern hash's time (see ``Accounts.login``)."""
        # the hosts and certs rules are asked before a one-time code is spent on a login they refuse
        result = self.accounts.login(username, password, refusal=lambda home: self._refusal(home, handler))
        return self._verdict(username, result, handler)

    def _verdict(self, username: str, result: Login, handler) -> tuple[str, str]:
        if hasattr(handler, "password_kind"):  # for the handler's metrics
            handler.password_kind = result.kind
        why = result.reason if not result.ok else self._refusal(result.home, handler)
        if why:
            log.info("login refused for %r: %s", username, why)
            raise AuthenticationFailed("Authentication failed.")
        return result.home, self.get_msg_login(username)

    def _refusal(self, home: str, handler) -> str | None:
        """Why ``.xxftp/hosts`` or ``.xxftp/certs`` refuse this login to
        ``home`` (whose password, if any, was right), or None."""
        nets = shared_store(self.root).hosts(home)
        ip = getattr(handler, "remote_ip", "")
        if nets is not None and not access.matches(ip, list(nets)):
            return f"{ip} is not in its .xxftp/hosts"
        if self._certificate_way(home, handler) is clientcerts.Way.REFUSED:
            return "its .xxftp/certs needs a listed client certificate as well as the password"
        return None

    def _certificate_way(self, home: str, handler) -> clientcerts.Way:
        """How ``.xxftp/certs`` lets this user in, given the client certificate
        of the handler's control connection (``client_fingerprint``)."""
        rule = shared_store(self.root).certs(home)
        if rule is None:
            return clientcerts.Way.PASSWORD
        presented = getattr(handler, "client_fingerprint", lambda: None)()
        return clientcerts.way(rule, presented)

    def certificate_login(self, username: str, handler) -> tuple[str, str] | None:
        """``check_login`` for a client whose certificate alone logs
        ``username`` in (``.xxftp/certs`` lists it, without ``and-password``):
        (home, login message), AuthenticationFailed (its ``hosts`` refuse),
        or None when the certificate does not log this user in alone."""
        home = self.accounts.home_of(username)
        if home is None or self._certificate_way(home, handler) is not clientcerts.Way.CERTIFICATE:
            return None
        if shared_store(self.root).totp(home) is not None:
            return None  # a home with one-time codes asks every login for one: PASS password+code
        verdict = self._verdict(username, Login(True, home), handler)
        log.info("%r logged in by a client certificate listed in its .xxftp/certs", username)
        return verdict

    def get_home_dir(self, username: str) -> str:
        home = self.accounts.home_of(username)
        if home is None:
            raise AuthorizerError(f"no such user {username!r}")
        return home

    def has_user(self, username: str) -> bool:
        return self.accounts.home_of(username) is not None

    def impersonate_user(self, username: str, password: str) -> None:
        """Sessions run as the server's own OS user."""

    def terminate_impersonation(self, username: str) -> None:
        """Sessions run as the server's own OS user."""

    # --- permissions (the tree's own are enforced by XxftpFS)

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return perm in self.perm

    def get_perms(self, username: str) -> str:
        return self.perm

    # --- messages

    def get_msg_login(self, username: str) -> str:
        return "Login successful."

    def get_msg_quit(self, username: str) -> str:
        return self.goodbye()

    def welcome(self) -> str:
        return banners.read_text(self.root, banners.WELCOME, banners.DEFAULT_WELCOME)

    def goodbye(self) -> str:
        return banners.read_text(self.root, banners.GOODBYE, banners.DEFAULT_GOODBYE)
