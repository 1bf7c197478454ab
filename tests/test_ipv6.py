"""IPv6 as a first-class citizen: the default dual-stack listener, lftp and
curl over ``::1`` in active and passive mode, IPv4 clients of the
dual-stack socket seen as IPv4 (PASV, access lists, per-address limits,
logs), and EPRT/PORT wildcards meaning the client's own address.

Every server here is the real ``xxftpd`` started without ``--host``: the
default is the dual-stack socket.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import XxftpdProcess, require_programs, run_xxftpd, sha
from xxftp_pyftpdlib import addresses

KiB = 1024
V4, V6 = "127.0.0.1", "::1"


def free_dual_port() -> int:
    """A port free on both stacks (a dual-stack socket takes it on both)."""
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as s:
        return s.getsockname()[1]


class Dual(XxftpdProcess):
    """``xxftpd`` on the default host (no ``--host``), with a debug log;
    ``extra`` flags. Reached on both loopbacks."""

    def __init__(self, root: Path, log: Path, *extra: str) -> None:
        self.host, self.log = "::", log
        self.port = free_dual_port()
        self.proc = run_xxftpd("--root", str(root), "--port", str(self.port), "--log-file", str(log),
                               "--log-level", "debug", *extra)
        self._wait_listening(V4, V6)
        self._mark = 0

    def url_of(self, host: str) -> str:
        return f"ftp://[{host}]:{self.port}" if ":" in host else f"ftp://{host}:{self.port}"

    def ftp(self, host: str) -> ftplib.FTP:
        self.host = host
        try:
            return self.ftplib()
        finally:
            self.host = "::"

    def stop(self) -> str:
        super().stop()
        return self.log.read_text(errors="replace")


def mapped(log: str) -> list[str]:
    """Log lines that write a client as IPv4-mapped (not counting
    pyftpdlib's [debug] lines, which show sockets' own addresses, the
    passive listener's among them, nor the commands clients sent)."""
    return [line for line in log.splitlines() if "::ffff:" in line and "[debug]" not in line and "] <- " not in line]


def make_root(base: Path) -> Path:
    root = base / "root"
    home = root / "alice"
    (home / ".xxftp").mkdir(parents=True)
    (home / ".xxftp/password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
    (home / "data").mkdir()
    (home / "data/a.bin").write_bytes(os.urandom(300 * KiB + 7))
    return root


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    require_programs("lftp", "curl")
    base = tmp_path_factory.mktemp("dual")
    root = make_root(base)
    server = Dual(root, base / "xxftpd.log")
    server.root, server.home = root, root / "alice"
    yield server
    log = server.stop()
    assert not mapped(log), mapped(log)


def lftp(url: str, script: str, cwd: Path, passive: bool) -> subprocess.CompletedProcess:
    settings = ("set cmd:fail-exit yes; set net:max-retries 1; set net:reconnect-interval-base 1; "
                "set net:timeout 15; set ftp:ssl-allow no; set xfer:clobber on; "
                f"set ftp:passive-mode {'on' if passive else 'off'}; ")
    return subprocess.run(["lftp", "-c", settings + f"open -u alice,pw {url}; " + script],
                          cwd=cwd, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("host, passive, command", [
    (V6, True, "EPSV"), (V6, False, "EPRT"), (V4, True, "PASV"), (V4, False, "PORT")],
    ids=["ipv6-passive", "ipv6-active", "ipv4-passive", "ipv4-active"])
def test_lftp_uploads_and_downloads_on_both_stacks_of_one_socket(dual, tmp_path, host, passive, command):
    """lftp in active mode on ::1 sends ``EPRT |2|::|port|``: the server
    connects to the control connection's address instead of refusing it."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(700 * KiB + 1))
    name = f"lftp-{'v6' if ':' in host else 'v4'}-{command}.bin"
    dual.mark()
    run = lftp(dual.url_of(host), f"put {src} -o {name}; ls; get data/a.bin -o {tmp_path / 'back.bin'}", tmp_path, passive)
    assert run.returncode == 0, run.stderr
    assert name in run.stdout
    assert sha((dual.home / name).read_bytes()) == sha(src.read_bytes())
    assert sha((tmp_path / "back.bin").read_bytes()) == sha((dual.home / "data/a.bin").read_bytes())
    assert set(dual.commands()) & {"PASV", "EPSV", "PORT", "EPRT"} == {command}
    if command == "EPRT":
        assert re.search(r"<- EPRT \|2\|::\|\d+\|", dual.since_mark()), "lftp sent no wildcard EPRT"


CURL = {"passive": ["--ftp-pasv"], "active": ["--ftp-port", "-"], "active-P": ["-P", "-"]}


@pytest.mark.parametrize("host", [V6, V4], ids=["ipv6", "ipv4"])
@pytest.mark.parametrize("mode", list(CURL))
def test_curl_uploads_and_downloads_on_both_stacks_of_one_socket(dual, tmp_path, host, mode):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(500 * KiB + 3))
    name = f"curl-{'v6' if ':' in host else 'v4'}-{mode}.bin"
    url = dual.url_of(host)
    dual.mark()
    curl = ["curl", "-sS", "-g", "--max-time", "60", "-u", "alice:pw", *CURL[mode]]
    run = subprocess.run([*curl, "-T", str(src), f"{url}/{name}"], capture_output=True, timeout=90)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([*curl, "-o", str(tmp_path / "back.bin"), f"{url}/{name}"], capture_output=True, timeout=90)
    assert run.returncode == 0, run.stderr
    assert sha((tmp_path / "back.bin").read_bytes()) == sha(src.read_bytes()) == sha((dual.home / name).read_bytes())
    used = set(dual.commands()) & {"PASV", "EPSV", "PORT", "EPRT"}
    assert used == ({"EPSV"} if mode == "passive" else {"EPRT"}), used


def test_an_ipv4_client_of_the_dual_stack_socket_is_ipv4(dual):
    """PASV announces its IPv4 address; PORT to its own address works;
    the log writes it as IPv4."""
    dual.mark()
    ftp = dual.ftp(V4)
    try:
        reply = ftp.sendcmd("PASV")
        assert re.search(r"\(127,0,0,1,\d+,\d+\)", reply), reply
        ftp.set_pasv(True)
        assert ftp.nlst("data") == ["data/a.bin"] or ftp.nlst("data") == ["a.bin"]
        ftp.set_pasv(False)  # PORT 127,0,0,1,...
        back = io.BytesIO()
        ftp.retrbinary("RETR data/a.bin", back.write)
        assert sha(back.getvalue()) == sha((dual.home / "data/a.bin").read_bytes())
    finally:
        ftp.quit()
    log = dual.since_mark()
    assert "127.0.0.1:" in log and not mapped(log), mapped(log)


def _eprt_nlst(ftp: ftplib.FTP, family: str, address: str, listen_host: str) -> tuple[str, str]:
    """Send ``EPRT |family|address|port|`` with a listener of ours on
    ``listen_host`` and run NLST: (reply to EPRT, peer that connected)."""
    af = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    with socket.socket(af) as listener:
        listener.bind((listen_host, 0))
        listener.listen(1)
        listener.settimeout(10)
        reply = ftp.sendcmd(f"EPRT |{family}|{address}|{listener.getsockname()[1]}|")
        ftp.putcmd("NLST")
        conn, peer = listener.accept()
        with conn:
            assert ftp.getresp().startswith(("125", "150"))
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        assert ftp.getresp().startswith("226")
        assert b"data" in data
        return reply, peer[0]


@pytest.mark.parametrize("host, family, address", [
    (V6, "2", "::"), (V6, "1", "0.0.0.0"), (V6, "2", "0:0:0:0:0:0:0:1"),
    (V4, "1", "0.0.0.0"), (V4, "2", "::"), (V4, "2", "::ffff:127.0.0.1"), (V4, "1", "127.0.0.1")])
def test_eprt_wildcards_and_mapped_addresses_mean_the_clients_own_address(dual, host, family, address):
    ftp = dual.ftp(host)
    try:
        reply, peer = _eprt_nlst(ftp, family, address, host)
        assert reply.startswith("200"), reply
        assert addresses.plain(peer) == host
    finally:
        ftp.quit()


def test_eprt_to_another_address_is_still_refused(dual):
    ftp = dual.ftp(V6)
    try:
        with pytest.raises(ftplib.error_perm, match="501"):
            ftp.sendcmd("EPRT |1|127.0.0.1|40000|")  # not the client's own (it is on ::1)
        with pytest.raises(ftplib.error_perm, match="501"):
            ftp.sendcmd("EPRT |2|::2|40000|")
    finally:
        ftp.quit()
    ftp = dual.ftp(V4)
    try:
        with pytest.raises(ftplib.error_perm, match="501"):
            ftp.sendcmd("EPRT |2|::1|40000|")
        with pytest.raises(ftplib.error_perm, match="501"):
            ftp.sendcmd("EPRT |1|127.0.0.2|40000|")
    finally:
        ftp.quit()


def test_pasv_over_ipv6_is_refused_and_epsv_works(dual):
    ftp = dual.ftp(V6)
    try:
        with pytest.raises(ftplib.error_perm, match="522 .*EPSV"):
            ftp.sendcmd("PASV")
        assert ftp.sendcmd("EPSV").startswith("229")
    finally:
        ftp.quit()


# --- access lists and per-address limits on the dual-stack socket


def refused(dual: Dual, host: str) -> str | None:
    """The 421 a new connection from ``host`` gets, or None if greeted."""
    ftp = ftplib.FTP()
    ftp.af = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        ftp.connect(host, dual.port, timeout=10)
    except ftplib.error_temp as err:
        return str(err)
    ftp.close()
    return None


@pytest.mark.parametrize("flags, v4_refused, v6_refused", [
    (["--deny-from", "127.0.0.1"], True, False),
    (["--deny-from", "127.0.0.0/8"], True, False),
    (["--allow-from", "127.0.0.1"], False, True),
    (["--deny-from", "::1"], False, True),
    (["--allow-from", "::1/128"], True, False),
], ids=["deny-v4", "deny-v4-net", "allow-v4", "deny-v6", "allow-v6"])
def test_access_lists_see_ipv4_clients_as_ipv4(tmp_path, flags, v4_refused, v6_refused):
    dual = Dual(make_root(tmp_path), tmp_path / "xxftpd.log", *flags)
    try:
        assert (refused(dual, V4) is not None) == v4_refused
        assert (refused(dual, V6) is not None) == v6_refused
    finally:
        log = dual.stop()
    assert not mapped(log), mapped(log)


def test_per_address_limits_and_the_connection_count_see_ipv4_clients_as_ipv4(tmp_path):
    """Two places per address: the third IPv4 session is refused while ::1
    still gets in; and sessions that came and went leave no count behind
    (pyftpdlib counts connections by the accepted address and uncounts
    them by the session's)."""
    dual = Dual(make_root(tmp_path), tmp_path / "xxftpd.log", "--max-cons-per-ip", "2", "--max-cons", "3")
    try:
        for _ in range(6):  # come and go
            dual.ftp(V4).quit()
        first, second = dual.ftp(V4), dual.ftp(V4)
        reply = refused(dual, V4)
        assert reply is not None and "same IP address" in reply, reply
        third = dual.ftp(V6)  # another address: a place (3 of --max-cons 3)
        for ftp in (first, second, third):
            ftp.quit()
        sessions = [dual.ftp(V4), dual.ftp(V4), dual.ftp(V6)]  # every place free again
        for ftp in sessions:
            ftp.quit()
    finally:
        log = dual.stop()
    assert not mapped(log), mapped(log)


# --- the rules, without sockets


def test_plain_writes_one_form_per_address():
    assert addresses.plain("::ffff:192.0.2.7") == "192.0.2.7"
    assert addresses.plain("::FFFF:c000:0207") == "192.0.2.7"
    assert addresses.plain("0:0:0:0:0:0:0:1") == "::1"
    assert addresses.plain("2001:DB8::1") == "2001:db8::1"
    assert addresses.plain("fe80::1%eth0") == "fe80::1%eth0"
    assert addresses.plain("192.0.2.7") == "192.0.2.7"
    assert addresses.plain("not an address") == "not an address"
    assert addresses.is_ipv6("::1") and not addresses.is_ipv6("::ffff:10.0.0.1") and not addresses.is_ipv6("10.0.0.1")


def test_port_target_reads_wildcards_as_the_control_address():
    assert addresses.port_target("2", "::", "2001:db8::5") == ("2", "2001:db8::5")
    assert addresses.port_target("2", "::", "192.0.2.7") == ("1", "192.0.2.7")
    assert addresses.port_target("1", "0.0.0.0", "::1") == ("2", "::1")
    assert addresses.port_target("2", "::ffff:192.0.2.7", "192.0.2.7") == ("1", "192.0.2.7")
    assert addresses.port_target("2", "2001:db8::9", "2001:db8::5") == ("2", "2001:db8::9")  # the bounce check judges
    assert addresses.port_target("1", "300.1.1.1", "192.0.2.7") == ("1", "300.1.1.1")


def test_eprt_and_port_arguments_name_the_clients_own_address_for_a_wildcard():
    assert addresses.eprt_argument("|2|::|5000|", "::1") == "|2|::1|5000|"
    assert addresses.eprt_argument("|1|0.0.0.0|5000|", "192.0.2.7") == "|1|192.0.2.7|5000|"
    assert addresses.eprt_argument("!2!::!5000!", "::1") == "|2|::1|5000|"
    for malformed in ("", "||||", "|3|::|5000|", "|2|::|"):
        assert addresses.eprt_argument(malformed, "::1") == malformed
    assert addresses.port_argument("0,0,0,0,19,136", "192.0.2.7") == "192,0,2,7,19,136"
    assert addresses.port_argument("0,0,0,0,19,136", "::1") == "0,0,0,0,19,136"  # the bounce check refuses it
    assert addresses.port_argument("10,0,0,1,19,136", "192.0.2.7") == "10,0,0,1,19,136"


def test_port_0_0_0_0_from_an_ipv4_client_connects_back_to_it(dual):
    ftp = dual.ftp(V4)
    try:
        with socket.socket() as listener:
            listener.bind((V4, 0))
            listener.listen(1)
            listener.settimeout(10)
            port = listener.getsockname()[1]
            assert ftp.sendcmd(f"PORT 0,0,0,0,{port >> 8},{port & 255}").startswith("200")
            ftp.putcmd("NLST")
            conn, peer = listener.accept()
            with conn:
                assert ftp.getresp().startswith(("125", "150"))
                assert b"data" in conn.makefile("rb").read()
            assert peer[0] == V4
        assert ftp.getresp().startswith("226")
    finally:
        ftp.close()


def test_the_default_host_is_the_dual_stack_address():
    from xxftp_pyftpdlib.cli import build_parser
    from xxftp_pyftpdlib.server import Options
    assert Options().host == addresses.ALL == build_parser().parse_args([]).host == "::"


@given(st.text(max_size=60), st.sampled_from(["::1", "192.0.2.7", "::ffff:192.0.2.7", "fe80::1%eth0", "junk"]))
def test_address_rules_take_any_argument_without_raising(line, control):
    assert isinstance(addresses.eprt_argument(line, control), str)
    assert isinstance(addresses.port_argument(line, control), str)
    assert isinstance(addresses.plain(line), str)
    addresses.is_ipv6(line)
