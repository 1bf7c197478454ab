"""The README's first command serves the sample tree to this machine only."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
from pathlib import Path

from conftest import HOST, free_port, run_xxftpd, stop_process

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLE = README.parent / "sample_root"


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.S | re.M)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:  # LISTEN
                    raw = bytes.fromhex(address)
                    if len(raw) == 4:
                        found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                    else:  # four little-endian 32-bit words
                        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                        found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_first_command_binds_the_sample_to_loopback(tmp_path):
    first = sh_blocks()[0].strip()
    install, sep, serve = first.partition(" && ")
    assert sep and install == "python3 -m pip install ."
    argv = shlex.split(serve)
    assert argv[0] == "xxftpd" and argv[argv.index("--root") + 1] == "sample_root"
    assert argv[argv.index("--host") + 1] == "127.0.0.1", "the sample's passwords are public"
    root = tmp_path / "sample_root"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("ledger*"))
    port = free_port()
    args = argv[1:]
    args[args.index("--root") + 1] = str(root)
    args[args.index("--port") + 1] = str(port)
    proc = run_xxftpd(*args, wait_for_port=port)
    try:
        assert listening_addresses(port) == {HOST}
        with socket.create_connection((HOST, port), timeout=5) as s:
            assert s.recv(100).startswith(b"220")
    finally:
        stop_process(proc)


def test_second_command_is_the_ci_one():
    second = sh_blocks()[1].strip()
    assert second == ("sh tests/debian-packages.sh && python3 -m pip install -e '.[test]' "
                      "&& python3 -m pytest -q")


def test_the_example_config_is_valid_and_keeps_the_sample_on_loopback():
    from xxftp_pyftpdlib.cli import build_parser, load_config

    parser = build_parser()
    values = load_config(parser, str(README.parent / "xxftpd.example.toml"))
    assert values["root"] == "sample_root" and values["host"] == "127.0.0.1"
    for key in ("data_timeout", "passive_timeout", "ascii_mangling"):  # every default written as it is
        assert values[key] == parser.get_default(key), key


def test_the_example_config_names_every_serving_flag():
    """Set or commented out, every key is there for an administrator to find."""
    from xxftp_pyftpdlib.cli import _NOT_IN_CONFIG, build_parser

    text = (README.parent / "xxftpd.example.toml").read_text()
    keys = [a.dest for a in build_parser()._actions if a.option_strings and a.dest not in _NOT_IN_CONFIG]
    assert [key for key in keys if f"{key} = " not in text] == []
