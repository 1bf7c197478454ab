"""Access control over real sockets: allow/deny lists, per-user hosts,
bans under each server class, and FTP bounce protection."""

from __future__ import annotations

import ftplib
import signal
import socket

import pytest

from conftest import HOST, free_port, run_xxftpd
from xxftp_pyftpdlib import access


def greet(port, source="127.0.0.1", host=HOST):
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as s:
        return s.makefile("rb").readline().decode()


def test_rules():
    nets = access.networks(["10.0.0.0/8, 192.0.2.7", "::1"])
    assert access.matches("10.1.2.3", nets) and access.matches("::ffff:10.1.2.3", nets)
    assert access.matches("::1", nets) and not access.matches("11.0.0.1", nets)
    assert access.permitted("10.0.0.1", nets, access.networks(["10.0.0.1"])) is False
    assert access.permitted("8.8.8.8", [], []) is True
    with pytest.raises(ValueError):
        access.networks(["10.0.0.0/33"])


def test_allow_and_deny_lists(tree, start_server):
    tree.user("bob")
    srv = start_server(tree.root, allow_from=access.networks(["127.0.0.0/8"]),
                       deny_from=access.networks(["127.0.0.2"]))
    assert greet(srv.port, "127.0.0.1").startswith("220")
    assert greet(srv.port, "127.0.0.2").startswith("421")
    assert greet(srv.port, "127.0.0.3").startswith("220")
    only = start_server(tree.root, allow_from=access.networks(["127.0.0.5/32"]))
    assert greet(only.port, "127.0.0.1").startswith("421")
    assert greet(only.port, "127.0.0.5").startswith("220")


def test_networks_written_ipv4_mapped_mean_their_ipv4_networks(tree, start_server):
    """Clients are never seen as ::ffff:a.b.c.d: a list written that way
    would match nothing (a deny list letting everyone in, an allow list
    locking everyone out) unless it is read as the IPv4 network it maps."""
    assert access.networks(["::ffff:127.0.0.0/104,::ffff:10.1.2.3"]) == access.networks(["127.0.0.0/8,10.1.2.3"])
    tree.user("bob")
    srv = start_server(tree.root, deny_from=access.networks(["::ffff:127.0.0.2"]))
    assert greet(srv.port, "127.0.0.2").startswith("421")
    assert greet(srv.port, "127.0.0.3").startswith("220")
    only = start_server(tree.root, allow_from=access.networks(["::ffff:127.0.0.5/128"]))
    assert greet(only.port, "127.0.0.5").startswith("220")


def test_an_ipv6_client_is_banned_by_its_64():
    """One host owns a /64: rotating addresses in it gains no guesses."""
    bans = access.BanList(ban_after=2, ban_time=60)
    assert not bans.failed("fd00:abcd::1")
    assert bans.failed("fd00:abcd::2")  # the second failure of the same /64
    assert bans.banned_for("fd00:abcd::ffff:1") > 0
    assert bans.banned_for("fd00:abce::1") == 0  # another /64
    assert not bans.failed("::ffff:127.0.0.9") and bans.failed("127.0.0.9")  # one client, two spellings


def test_the_ban_table_forgets_counts_not_bans_when_full():
    bans = access.BanList(ban_after=2, ban_time=60)
    bans.MAX_ENTRIES = 10
    bans.failed("10.0.0.1")
    bans.failed("10.0.0.1")  # banned
    for n in range(2, 30):
        bans.failed(f"10.0.0.{n}")
    assert len(bans._table) <= 10
    assert bans.banned_for("10.0.0.1") > 0


def test_per_user_hosts_file(tree, start_server):
    home = tree.user("alice", password="pw")
    tree.xxftp(home, "hosts", "# office\n127.0.0.7\nnot-a-network\n")
    bob = tree.user("bob")
    tree.xxftp(bob, "hosts", "garbage only\n")  # no valid line: nobody
    srv = start_server(tree.root)

    def login(user, password, source):
        ftp = ftplib.FTP(source_address=(source, 0))
        ftp.connect(HOST, srv.port, timeout=10)
        try:
            return ftp.login(user, password)
        except ftplib.error_perm as err:
            return str(err)
        finally:
            ftp.close()

    assert login("alice", "pw", "127.0.0.7").startswith("230")
    assert login("alice", "pw", "127.0.0.1").startswith("530 Authentication failed")
    assert login("bob", "", "127.0.0.1").startswith("530")


@pytest.mark.parametrize("concurrency", ["async", "multi-thread", "multi-proc"])
def test_ban_after_failed_logins(tree, concurrency):
    tree.user("alice", password="pw")
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), "--concurrency", concurrency,
                      "--ban-after", "3", "--ban-time", "30", wait_for_port=port)
    try:
        for attempt in range(3):  # each on its own connection, as a scanner would
            ftp = ftplib.FTP(source_address=("127.0.0.9", 0))
            ftp.connect(HOST, port, timeout=15)
            with pytest.raises(ftplib.error_perm, match="^530"):
                ftp.login("alice", f"wrong{attempt}")
            ftp.close()
        assert greet(port, "127.0.0.9").startswith("421 Too many failed logins")
        assert greet(port, "127.0.0.10").startswith("220")  # others are not affected
        ok = ftplib.FTP(source_address=("127.0.0.10", 0))
        ok.connect(HOST, port, timeout=15)
        assert ok.login("alice", "pw").startswith("230")
        ok.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_bounce_protection(tree, start_server, connect):
    tree.user("bob")
    ftp = connect(start_server(tree.root).port)
    ftp.sendcmd("USER bob")
    with pytest.raises(ftplib.error_perm, match="^501.*foreign"):
        ftp.sendcmd("PORT 192,0,2,1,39,16")  # a third host: refused
    with pytest.raises(ftplib.error_perm, match="^501.*privileged"):
        ftp.sendcmd("PORT 127,0,0,1,0,25")
    with pytest.raises(ftplib.error_perm, match="^501.*foreign"):
        ftp.sendcmd("EPRT |1|192.0.2.1|10000|")
    assert ftp.voidcmd("NOOP").startswith("200")


def test_bad_networks_are_clear_errors(tree):
    tree.user("bob")
    proc = run_xxftpd("--root", str(tree.root), "--port", str(free_port()), "--allow-from", "10.0.0.0/33")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode != 0 and err.startswith("xxftpd: error: invalid network") and "Traceback" not in err
