"""xxftpd: xxftp's folder-tree configuration on a modern pyftpdlib server.

Import these into any pyftpdlib script:

    from xxftp_pyftpdlib import XxftpAuthorizer, XxftpHandler
    XxftpHandler.authorizer = XxftpAuthorizer("/srv/ftp")
"""

__version__ = "0.1.0"

from .authorizer import XxftpAuthorizer
from .filesystem import XxftpFS
from .handler import XxftpHandler, XxftpTLSHandler

__all__ = ["XxftpAuthorizer", "XxftpFS", "XxftpHandler", "XxftpTLSHandler", "__version__"]
