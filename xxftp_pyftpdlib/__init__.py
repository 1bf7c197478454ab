"""xxftpd: xxftp's folder-tree configuration on a modern pyftpdlib server.

Import these into any pyftpdlib script:

    from xxftp_pyftpdlib import XxftpAuthorizer, XxftpHandler
    XxftpHandler.authorizer = XxftpAuthorizer("/srv/ftp")
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

# The classes load on first use: ``xxftpd`` must hold its stop signals
# (see __main__.py) before pyftpdlib and OpenSSL are imported.
_PUBLIC = {"XxftpAuthorizer": "authorizer", "XxftpFS": "filesystem",
           "XxftpHandler": "handler", "XxftpTLSHandler": "handler"}

if TYPE_CHECKING:
    from .authorizer import XxftpAuthorizer
    from .filesystem import XxftpFS
    from .handler import XxftpHandler, XxftpTLSHandler

__all__ = ["XxftpAuthorizer", "XxftpFS", "XxftpHandler", "XxftpTLSHandler", "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
