"""``python -m xxftp_pyftpdlib`` and the ``xxftpd`` command.

Its first statement holds SIGTERM and SIGINT: the imports that follow take
a good part of the start-up, and a stop sent meanwhile must be a clean one
(exit 0), not Python's default death. The package's ``__init__`` imports
nothing heavy, so this runs before pyftpdlib is loaded.
"""

from .signals import hold_stop_signals

hold_stop_signals()

import sys  # noqa: E402


def main() -> int:
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
