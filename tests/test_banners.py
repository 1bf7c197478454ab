"""The 220 greeting and the 221 farewell come from files in the server root."""

from __future__ import annotations

import ftplib
import socket

import pytest

from conftest import HOST
from xxftp_pyftpdlib import banners


class RawClient:
    """A control connection read line by line, exactly as the server sends it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        line = self.file.readline()
        assert line.endswith(b"\r\n"), f"incomplete line {line!r}"
        return line[:-2]

    def reply(self) -> list[str]:
        """All lines of one reply (RFC 959 multi-line rules)."""
        first = self.line().decode()
        lines = [first]
        if first[3:4] == "-":
            code = first[:3]
            while True:
                line = self.line().decode()
                lines.append(line)
                if line[:3] == code and line[3:4] == " ":
                    break
        return lines

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\r\n")

    def at_eof(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw():
    clients: list[RawClient] = []

    def open_raw(port: int) -> RawClient:
        client = RawClient(port)
        clients.append(client)
        return client

    yield open_raw
    for client in clients:
        client.close()


def assert_multiline(lines: list[str], code: str, texts: list[str]) -> None:
    assert len(lines) == len(texts)
    for line in lines[:-1]:
        assert line.startswith(code + "-"), lines
    assert lines[-1].startswith(code + " "), lines
    assert [line[4:] for line in lines] == texts
    assert not any("\r" in line or "\n" in line for line in lines)


# --- 220 greeting


def test_greeting_is_welcome_file(tree, start_server, connect):
    tree.file("xxftp.welcome", "Welcome to the test server\n")
    srv = start_server(tree.root)
    assert connect(srv.port).getwelcome() == "220 Welcome to the test server"


def test_multiline_greeting(tree, start_server, connect, raw):
    texts = ["Line one", "", "220 looks like an end but is not", "  indented", "Last line"]
    tree.file("xxftp.welcome", "\n".join(texts) + "\n")
    srv = start_server(tree.root)
    assert connect(srv.port).getwelcome() == "\n".join(
        [f"220-{t}" for t in texts[:-1]] + [f"220 {texts[-1]}"])
    client = raw(srv.port)
    assert_multiline(client.reply(), "220", texts)
    # The reply is complete: the next thing read is the answer to NOOP.
    client.send("NOOP")
    assert client.reply()[0].startswith("200")


def test_multiline_greeting_with_crlf_file(tree, start_server, raw):
    tree.file("xxftp.welcome", b"first\r\nsecond\r\nthird\r\n")
    srv = start_server(tree.root)
    assert_multiline(raw(srv.port).reply(), "220", ["first", "second", "third"])


def test_default_greeting_without_file(tree, start_server, connect, raw):
    tree.user("bob")
    srv = start_server(tree.root)
    assert connect(srv.port).getwelcome() == "220 " + banners.DEFAULT_WELCOME
    lines = raw(srv.port).reply()
    assert len(lines) == 1 and lines[0].startswith("220 ") and lines[0][4:].strip()


@pytest.mark.parametrize("content", ["", "\n\n", "   \n"])
def test_default_greeting_for_empty_file(tree, start_server, connect, content):
    tree.file("xxftp.welcome", content)
    srv = start_server(tree.root)
    assert connect(srv.port).getwelcome() == "220 " + banners.DEFAULT_WELCOME


def test_edited_welcome_takes_effect_without_restart(tree, start_server, connect):
    tree.file("xxftp.welcome", "First version\n")
    srv = start_server(tree.root)
    assert connect(srv.port).getwelcome() == "220 First version"
    tree.file("xxftp.welcome", "Second version\nnow two lines\n")
    assert connect(srv.port).getwelcome() == "220-Second version\n220 now two lines"
    (tree.root / "xxftp.welcome").unlink()
    assert connect(srv.port).getwelcome() == "220 " + banners.DEFAULT_WELCOME
    tree.file("xxftp.welcome", "Back again\n")
    assert connect(srv.port).getwelcome() == "220 Back again"


# --- 221 farewell


def test_quit_answers_goodbye_file(tree, start_server, connect):
    tree.user("bob")
    tree.file("xxftp.goodbye", "See you soon\n")
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER bob").startswith("230")
    assert ftp.quit() == "221 See you soon"


def test_quit_multiline_goodbye(tree, start_server, connect, raw):
    texts = ["Thanks for visiting", "221 not the end", "Bye"]
    tree.user("bob")
    tree.file("xxftp.goodbye", "\n".join(texts) + "\n")
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    ftp.sendcmd("USER bob")
    assert ftp.quit() == "\n".join([f"221-{t}" for t in texts[:-1]] + [f"221 {texts[-1]}"])

    client = raw(srv.port)
    client.reply()
    client.send("USER bob")
    assert client.reply()[0].startswith("230")
    client.send("QUIT")
    assert_multiline(client.reply(), "221", texts)
    assert client.at_eof()


def test_quit_before_login_answers_goodbye_file(tree, start_server, connect, raw):
    tree.file("xxftp.goodbye", "Come back\nwith a password\n")
    srv = start_server(tree.root)
    assert connect(srv.port).quit() == "221-Come back\n221 with a password"
    client = raw(srv.port)
    client.reply()
    client.send("QUIT")
    assert_multiline(client.reply(), "221", ["Come back", "with a password"])
    assert client.at_eof()


def test_quit_default_goodbye_without_file(tree, start_server, connect):
    tree.user("alice", password="secret")
    srv = start_server(tree.root)
    assert connect(srv.port).quit() == "221 " + banners.DEFAULT_GOODBYE
    assert connect(srv.port, "alice", "secret").quit() == "221 " + banners.DEFAULT_GOODBYE


def test_quit_after_failed_login_answers_goodbye(tree, start_server, connect):
    tree.user("alice", password="secret")
    tree.file("xxftp.goodbye", "Farewell\n")
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("alice", "wrong")
    assert ftp.quit() == "221 Farewell"


def test_edited_goodbye_takes_effect_without_restart(tree, start_server, connect):
    tree.user("bob")
    srv = start_server(tree.root)
    assert connect(srv.port).quit() == "221 " + banners.DEFAULT_GOODBYE
    tree.file("xxftp.goodbye", "New goodbye\n")
    ftp = connect(srv.port)
    ftp.sendcmd("USER bob")
    assert ftp.quit() == "221 New goodbye"


def test_quit_closes_connection(tree, start_server, raw):
    tree.file("xxftp.goodbye", "Bye\n")
    srv = start_server(tree.root)
    client = raw(srv.port)
    client.reply()
    client.send("QUIT")
    assert client.reply() == ["221 Bye"]
    assert client.at_eof()
