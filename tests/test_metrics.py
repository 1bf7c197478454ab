"""--metrics: Prometheus figures and the status server, scraped over HTTP
from real servers while real clients log in and transfer."""

from __future__ import annotations

import ftplib
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import (HOST, UploadInProgress, download, free_port, ledger_used, listing, run_xxftpd,
                      start_logged, stop_logged, store, wait_until)
from xxftp_pyftpdlib import statuspage

prometheus_parser = pytest.importorskip("prometheus_client.parser")  # the test extra installs it

KiB = 1024


def get(port: int, path: str = "/metrics", host: str = HOST, source: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    status, body = get(port)
    assert status == 200, body
    return parse(body)


def scrape_when(port: int, name: str, value: float, **labels) -> dict[tuple[str, tuple], float]:
    """A scrape once ``name`` shows ``value``: a transfer or a login is
    counted as its reply leaves, so a client may ask a moment before."""
    assert wait_until(lambda: figure(scrape(port), name, **labels) == value), (name, labels, value)
    return scrape(port)


def parse(body: bytes) -> dict[tuple[str, tuple], float]:
    figures = {}
    for family in prometheus_parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            figures[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return figures


def figure(figures: dict, name: str, **labels) -> float:
    return figures.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_server(tree, *args: str) -> tuple[subprocess.Popen, int, int]:
    """A real xxftpd with --metrics on a free port: (process, FTP port, metrics port)."""
    mport = free_port()
    proc, port = start_logged(tree.root, "--metrics", f"{HOST}:{mport}", "--max-cons-per-ip", "0", *args)
    assert wait_until(lambda: _listening(mport)), "the metrics server does not listen"
    return proc, port, mport


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def login(port: int, user: str = "alice", password: str = "pw") -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=15)
    ftp.login(user, password)
    return ftp


def test_figures_follow_logins_transfers_and_quota(tree):
    home = tree.user("alice", password="pw", size="64K")
    tree.user("bob", password="pw")
    proc, port, mport = metrics_server(tree)
    try:
        # the one connection that waited for the server to listen, counted once the loop saw it
        before = scrape_when(mport, "xxftpd_connections_total", 1)
        assert figure(before, "xxftpd_build_info", **{k: v for k, v in next(
            labels for (name, labels) in before if name == "xxftpd_build_info")}) == 1
        assert figure(before, "xxftpd_quota_limit_bytes", user="alice", tree="/") == 64 * KiB
        assert ("xxftpd_quota_limit_bytes", (("tree", "/"), ("user", "bob"))) not in before  # unlimited

        alice = login(port)
        bob = login(port, "bob")
        with pytest.raises(ftplib.error_perm):
            login(port, "alice", "wrong")
        now = scrape_when(mport, "xxftpd_logins_total", 2, result="ok", password="md5")
        assert figure(now, "xxftpd_logins_total", result="failed", password="md5") == 1
        assert figure(now, "xxftpd_sessions", user="alice") == 1
        assert figure(now, "xxftpd_sessions", user="bob") == 1
        assert figure(now, "xxftpd_open_connections") >= 2
        assert figure(now, "xxftpd_connections_total") - figure(before, "xxftpd_connections_total") == 3
        assert figure(now, "xxftpd_login_check_duration_seconds_count") == 3

        # an upload in progress: its room is held ahead; it counts once it ends
        running = UploadInProgress(alice, "STOR big.bin")
        assert running.send(b"x" * (20 * KiB))
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_quota_reserved_bytes", user="alice", tree="/") > 0)
        assert figure(scrape(mport), "xxftpd_uploads_total") == 0
        assert running.finish(b"y" * (10 * KiB)).startswith("226")
        store(alice, "small.bin", b"z" * 1000)
        listing(bob, "NLST")
        assert download(alice, "small.bin") == b"z" * 1000
        assert store(alice, "too-big.bin", b"q" * (64 * KiB)).startswith("552")

        def settled() -> bool:
            f = scrape(mport)
            return (figure(f, "xxftpd_quota_used_bytes", user="alice", tree="/") == ledger_used(home)
                    and figure(f, "xxftpd_quota_reserved_bytes", user="alice", tree="/") == 0)
        assert wait_until(settled)
        after = scrape_when(mport, "xxftpd_upload_errors_total", 1, code="552")  # the last transfer
        assert figure(after, "xxftpd_uploads_total") == 3
        assert figure(after, "xxftpd_upload_bytes_total") >= 31 * KiB + 1000  # the refused one counts what came
        assert figure(after, "xxftpd_downloads_total") == 1
        assert figure(after, "xxftpd_upload_duration_seconds_count") == 3
        assert figure(after, "xxftpd_downloads_total") == 1
        assert figure(after, "xxftpd_download_bytes_total") == 1000
        assert figure(after, "xxftpd_listings_total", command="NLST") == 1
        assert figure(after, "xxftpd_quota_used_bytes", user="alice", tree="/") == 30 * KiB + 1000

        alice.quit()
        bob.close()
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_open_connections") == 0)
        final = scrape(mport)
        assert figure(final, "xxftpd_sessions", user="alice") == 0
        assert figure(final, "xxftpd_sessions", user="bob") == 0
    finally:
        log = stop_logged(proc)
    assert "metrics and status page on http://127.0.0.1:" in log


def test_refusals_and_bans_are_counted(tree):
    tree.user("alice", password="pw")
    proc, port, mport = metrics_server(tree, "--ban-after", "2", "--ban-time", "60", "--deny-from", "127.0.0.2")
    try:
        for _ in range(2):
            with pytest.raises(ftplib.error_perm):
                login(port, "alice", "wrong")
        refused = ftplib.FTP()
        with pytest.raises((ftplib.error_temp, EOFError, OSError)):
            refused.connect(HOST, port, timeout=5)
            refused.login("alice", "pw")
        figures = scrape(mport)
        assert figure(figures, "xxftpd_banned_addresses") == 1
        assert figure(figures, "xxftpd_connections_refused_total", reason="banned") == 1
        denied = socket.create_connection((HOST, port), timeout=5, source_address=("127.0.0.2", 0))
        assert denied.recv(200).startswith(b"421")
        denied.close()
        assert figure(scrape(mport), "xxftpd_connections_refused_total", reason="address") == 1
    finally:
        stop_logged(proc)


def _sockets_of(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        pass
    return inodes


def _connections_by_worker(port: int, workers: set[int]) -> dict[int, int]:
    """How many established FTP control connections each worker holds."""
    established = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                established.add(int(fields[9]))
    return {pid: len(_sockets_of(pid) & established) for pid in workers}


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if "xxftp_pyftpdlib" in line}


def test_workers_figures_add_up_across_processes(tree):
    """With --workers 2 a scrape is the whole server's: sessions served by
    both workers add up, and a worker killed meanwhile stops counting as
    open while its totals stay."""
    tree.user("alice", password="pw", size="10M")
    proc, port, mport = metrics_server(tree, "--workers", "2")
    clients: list[ftplib.FTP] = []
    try:
        assert wait_until(lambda: len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)
        while len(clients) < 40:  # until both workers serve some
            clients.append(login(port))
            share = _connections_by_worker(port, workers)
            if len(clients) >= 6 and all(share.values()):
                break
        share = _connections_by_worker(port, workers)
        assert all(share.values()) and sum(share.values()) == len(clients), share
        for i, ftp in enumerate(clients):
            assert store(ftp, f"f{i}.bin", b"w" * KiB).startswith("226")
        n = len(clients)
        figures = scrape_when(mport, "xxftpd_uploads_total", n)
        assert figure(figures, "xxftpd_upload_bytes_total") == n * KiB
        assert figure(figures, "xxftpd_logins_total", result="ok", password="md5") == n
        assert figure(figures, "xxftpd_sessions", user="alice") == n
        assert figure(figures, "xxftpd_open_connections") == n
        assert figure(figures, "xxftpd_quota_used_bytes", user="alice", tree="/") == n * KiB

        victim = max(workers, key=lambda pid: share[pid])
        lost = share[victim]
        os.kill(victim, 9)  # a crash: its figures of "now" must go, its totals stay
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_open_connections") == n - lost)
        figures = scrape(mport)
        assert figure(figures, "xxftpd_sessions", user="alice") == n - lost
        assert figure(figures, "xxftpd_uploads_total") == n
    finally:
        for ftp in clients:
            ftp.close()
        stop_logged(proc)


@pytest.mark.parametrize("concurrency", ["multi-proc", "multi-thread"])
def test_figures_of_a_process_or_thread_per_connection(tree, concurrency):
    tree.user("alice", password="pw")
    proc, port, mport = metrics_server(tree, "--concurrency", concurrency)
    try:
        clients = [login(port) for _ in range(3)]
        for i, ftp in enumerate(clients):
            assert store(ftp, f"m{i}.bin", b"m" * 100).startswith("226")
        figures = scrape_when(mport, "xxftpd_uploads_total", 3)
        assert figure(figures, "xxftpd_open_connections") == 3
        assert figure(figures, "xxftpd_sessions", user="alice") == 3
        for ftp in clients:
            ftp.quit()
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_open_connections") == 0)
        # the ended processes' totals are folded together once, never lost or counted twice
        for _ in range(3):
            figures = scrape(mport)
            assert figure(figures, "xxftpd_connections_total") == 3 + 1  # start_logged's probe too
            assert figure(figures, "xxftpd_uploads_total") == 3
            assert figure(figures, "xxftpd_upload_duration_seconds_count") == 3
            assert figure(figures, "xxftpd_logins_total", result="ok", password="md5") == 3
    finally:
        stop_logged(proc)


def _other_address() -> str | None:
    """A non-loopback address of this host, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_only_allowed_networks_may_read(tree):
    tree.user("alice", password="pw")
    mport = free_port()
    proc, _ = start_logged(tree.root, "--metrics", f"0.0.0.0:{mport}")  # every address; loopback reads
    try:
        assert wait_until(lambda: _listening(mport))
        for path in ("/metrics", "/", "/status.json"):
            assert get(mport, path)[0] == 200
        assert get(mport, "/nothing")[0] == 404
        other = _other_address()
        if other is not None:  # the default lets only loopback in
            for path in ("/metrics", "/", "/status.json", "/nothing"):
                status, body = get(mport, path, host=other, source=other)
                assert status == 403 and b"xxftpd" not in body
    finally:
        stop_logged(proc)
    mport = free_port()
    proc, _ = start_logged(tree.root, "--metrics", f"{HOST}:{mport}", "--metrics-allow", "10.0.0.0/8",
                           "--metrics-allow", "192.0.2.0/24,fd00::/8")
    try:
        assert wait_until(lambda: _listening(mport))
        for path in ("/metrics", "/", "/status.json", "/nothing"):
            status, body = get(mport, path)
            assert status == 403, path
            assert b"xxftpd_" not in body
    finally:
        stop_logged(proc)


def test_a_port_in_use_is_one_error_line(tree):
    tree.user("alice", password="pw")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        mport = taken.getsockname()[1]
        proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(free_port()),
                          "--metrics", f"{HOST}:{mport}")
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"xxftpd: error: cannot listen for metrics on {HOST}:{mport}: "
                                        "Address already in use"], err
    for bad in ("nowhere:80", "127.0.0.1:70000", "127.0.0.1:x"):
        proc = run_xxftpd("--root", str(tree.root), "--metrics", bad)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 2 and "Traceback" not in err and "metrics" in err, err
    proc = run_xxftpd("--root", str(tree.root), "--port", str(free_port()), "--metrics", f"{HOST}:{free_port()}",
                      "--metrics-allow", "10.0.0.300/8")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and err.startswith("xxftpd: error: invalid network in --metrics-allow"), err


def test_the_toml_key_turns_metrics_on(tree, tmp_path):
    tree.user("alice", password="pw")
    mport = free_port()
    config = tmp_path / "xxftpd.toml"
    config.write_text(f'metrics = "{HOST}:{mport}"\nmetrics_allow = ["127.0.0.1"]\n')
    proc, _ = start_logged(tree.root, "--config", str(config))
    try:
        assert wait_until(lambda: _listening(mport))
        assert "xxftpd_build_info" in get(mport)[1].decode()
    finally:
        stop_logged(proc)


def test_scrapes_never_write_a_tree_and_survive_a_bad_ledger(tree):
    home = tree.user("alice", password="pw", size="1M")
    proc, port, mport = metrics_server(tree)
    try:
        carol = tree.user("carol", password="pw", size="2M")  # a tree no one has used: no ledger yet
        ledger = home / ".xxftp" / "ledger"
        ledger.write_text("{ not a ledger")
        ledger.chmod(0o600)
        stamp = ledger.stat().st_mtime_ns
        time.sleep(2.1)  # past the view's cache
        figures = scrape(mport)
        assert figure(figures, "xxftpd_quota_limit_bytes", user="alice", tree="/") == 1024 * KiB
        assert ("xxftpd_quota_used_bytes", (("tree", "/"), ("user", "alice"))) not in figures
        assert figure(figures, "xxftpd_quota_limit_bytes", user="carol", tree="/") == 2048 * KiB
        status, body = get(mport, "/status.json")
        assert status == 200
        trees = {q["user"]: q for q in json.loads(body)["quotas"]}
        assert trees["alice"]["used"] is None and trees["carol"]["limit"] == 2048 * KiB
        assert ledger.read_text() == "{ not a ledger" and ledger.stat().st_mtime_ns == stamp
        assert not (carol / ".xxftp" / "ledger").exists()
    finally:
        stop_logged(proc)


# --- rules without a server


def test_metrics_addresses():
    assert statuspage.parse_address("127.0.0.1:9121") == ("127.0.0.1", 9121)
    assert statuspage.parse_address("[::1]:9121") == ("::1", 9121)
    assert statuspage.parse_address("9121") == ("127.0.0.1", 9121)
    assert statuspage.parse_address(":9121") == ("0.0.0.0", 9121)
    for bad in ("host:1", "1.2.3.4:", "1.2.3.4:99999", "[::1]"):
        with pytest.raises(ValueError):
            statuspage.parse_address(bad)


def test_tls_sessions_are_counted(tree, tmp_path):
    import ssl

    from conftest import ResumingFTP_TLS
    from xxftp_pyftpdlib import certs

    tree.user("alice", password="pw")
    cert, key = certs.self_signed(str(tmp_path / "tls"))
    proc, port, mport = metrics_server(tree, "--tls", "--certfile", cert, "--keyfile", key)
    try:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        ftp = ResumingFTP_TLS(context=context)
        ftp.connect(HOST, port, timeout=15)
        ftp.login("alice", "pw")  # AUTH TLS first
        ftp.prot_p()
        assert store(ftp, "secret.bin", b"s" * 5000).startswith("226")
        figures = scrape_when(mport, "xxftpd_upload_bytes_total", 5000)
        assert figure(figures, "xxftpd_tls_handshakes_total") == 1
        assert figure(figures, "xxftpd_tls_sessions") == 1
        ftp.quit()
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_tls_sessions") == 0)
        assert figure(scrape(mport), "xxftpd_tls_handshakes_total") == 1
    finally:
        stop_logged(proc)


def test_idle_connections_can_not_take_the_status_server(tree):
    """Connections that send nothing hold no more than MAX_CLIENTS threads,
    for a few seconds: a scrape gets through once they time out."""
    tree.user("alice", password="pw")
    proc, port, mport = metrics_server(tree)
    idle = []
    try:
        for _ in range(statuspage.MAX_CLIENTS + 8):
            idle.append(socket.create_connection((HOST, mport), timeout=5))
        def answered() -> bool:
            try:
                return get(mport)[0] == 200
            except (http.client.HTTPException, OSError):  # closed unanswered while the slots are taken
                return False
        assert not answered()
        assert wait_until(answered, timeout=15)
        assert login(port).quit().startswith("221")  # the FTP side never noticed
    finally:
        for s in idle:
            s.close()
        stop_logged(proc)


def test_without_prometheus_client_it_says_what_to_install(tree):
    tree.user("alice", password="pw")
    code = ("import sys; sys.modules['prometheus_client'] = None; from xxftp_pyftpdlib.cli import main; "
            f"sys.exit(main(['--root', {str(tree.root)!r}, '--port', '0', '--metrics', '127.0.0.1:0']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == "xxftpd: error: --metrics needs prometheus_client: pip install 'xxftpd[metrics]'\n"


def test_a_broken_download_is_an_error_by_its_reply(tree):
    import struct

    tree.user("alice", password="pw")
    tree.file("alice/big.bin", b"b" * (32 * 1024 * KiB))
    proc, port, mport = metrics_server(tree)
    try:
        ftp = login(port)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        conn.recv(1000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset: the download breaks
        reply = ftp.getline()
        assert reply.startswith("426"), reply
        assert wait_until(lambda: figure(scrape(mport), "xxftpd_downloads_total") == 1)
        figures = scrape(mport)
        assert figure(figures, "xxftpd_download_errors_total", code="426") == 1
        assert 0 < figure(figures, "xxftpd_download_bytes_total") < 32 * 1024 * KiB
    finally:
        stop_logged(proc)


def test_clients_that_misbehave_leave_one_line_at_most(tree):
    """Garbage, a POST, a client gone mid-answer: answered or dropped, and
    never a traceback in the log."""
    tree.user("alice", password="pw")
    proc, port, mport = metrics_server(tree, "--log-level", "debug")
    try:
        for raw in (b"\x16\x03\x01garbage\r\n\r\n", b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            with socket.create_connection((HOST, mport), timeout=5) as s:
                s.sendall(raw)
                answer = s.recv(100)
                assert answer.startswith(b"HTTP/1.") or answer.startswith(b"<!DOCTYPE HTML>"), raw[:20]
        for _ in range(5):  # gone before reading the answer
            s = socket.create_connection((HOST, mport), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        assert get(mport)[0] == 200
    finally:
        log = stop_logged(proc)  # no traceback in it
    assert "Exception occurred" not in log and "status 127.0.0.1" in log


def test_events_become_figures_in_one_process():
    from concurrent.futures import Future

    from xxftp_pyftpdlib import metrics

    m = metrics.Metrics()
    for event in (m.connection, m.opened, m.opened, m.closed, m.tls_started):
        event()
    m.refused("banned")
    m.login(True, "scrypt")
    m.login(False, "no_user")
    m.session_started("alice")
    m.session_started("alice")
    m.session_ended("alice")
    m.transfer(True, True, 100, 0.2, 226)
    m.transfer(True, False, 50, 0.1, 552)
    m.transfer(False, False, 70, 40.0, 426)
    check = Future()
    m.login_check(check)
    m.listing("MLSD")
    assert figure(parse(m.exposition()[0]), "xxftpd_login_checks_in_progress") == 1
    check.set_result(None)
    figures = parse(m.exposition()[0])
    assert figure(figures, "xxftpd_connections_total") == 1
    assert figure(figures, "xxftpd_open_connections") == 1
    assert figure(figures, "xxftpd_connections_refused_total", reason="banned") == 1
    assert figure(figures, "xxftpd_logins_total", result="ok", password="scrypt") == 1
    assert figure(figures, "xxftpd_logins_total", result="failed", password="no_user") == 1
    assert figure(figures, "xxftpd_sessions", user="alice") == 1
    assert figure(figures, "xxftpd_uploads_total") == 2
    assert figure(figures, "xxftpd_upload_bytes_total") == 150
    assert figure(figures, "xxftpd_upload_errors_total", code="552") == 1
    assert figure(figures, "xxftpd_download_errors_total", code="426") == 1
    assert figure(figures, "xxftpd_download_duration_seconds_bucket", le="30.0") == 0
    assert figure(figures, "xxftpd_download_duration_seconds_bucket", le="60.0") == 1
    assert figure(figures, "xxftpd_login_checks_in_progress") == 0
    assert figure(figures, "xxftpd_login_check_duration_seconds_count") == 1
    assert figure(figures, "xxftpd_listings_total", command="MLSD") == 1
    assert figure(figures, "xxftpd_tls_sessions") == 1 and figure(figures, "xxftpd_tls_handshakes_total") == 1
    assert ("xxftpd_banned_addresses", ()) not in figures  # no ban list: no figure
