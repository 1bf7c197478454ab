"""``xxftpd who``: the sessions of a running server, read from its status
sockets; real servers (the ``xxftpd`` command), real clients."""

from __future__ import annotations

import ftplib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import HOST, UploadInProgress, start_logged, stop_logged, wait_until
from xxftp_pyftpdlib import who

KiB = 1024


def run_who(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), "who", *args],
                          capture_output=True, text=True, timeout=30)


def login(port: int, user: str, password: str) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    ftp.login(user, password)
    return ftp


def by_user(found: list[dict]) -> dict:
    return {s["user"]: s for s in found}


def state_entries(root) -> list[str]:
    return sorted(os.listdir(os.path.join(root, who.STATE_DIR)))


def upload_bytes(root, user: str) -> int | None:
    s = by_user(who.sessions(str(root))).get(user)
    return s["transfer"]["bytes"] if s and s["transfer"] else None


def test_two_users_one_uploading_one_idle(tree):
    tree.user("alice", password="alice-pw")
    tree.user("bob", password="bob-secret")
    proc, port = start_logged(tree.root)
    clients = []
    try:
        alice = login(port, "alice", "alice-pw")
        bob = login(port, "bob", "bob-secret")
        stranger = ftplib.FTP()
        stranger.connect(HOST, port, timeout=10)
        stranger.sendcmd("USER carol")
        clients += [alice, bob, stranger]
        upload = UploadInProgress(alice, "STOR big.bin")
        assert upload.send(b"x" * (64 * KiB))
        assert wait_until(lambda: upload_bytes(tree.root, "alice") == 64 * KiB)
        time.sleep(1.1)  # bob stays idle meanwhile
        assert upload.send(b"y" * (192 * KiB))
        assert wait_until(lambda: upload_bytes(tree.root, "alice") == 256 * KiB)  # progress seen to grow

        found = who.sessions(str(tree.root))
        assert len(found) == 3, found
        users = by_user(found)
        a, b, c = users["alice"], users["bob"], users[None]
        assert a["transfer"]["direction"] == "upload" and a["transfer"]["path"] == "/big.bin"
        assert a["transfer"]["size"] is None and a["transfer"]["rate"] > 0
        assert a["command"] == "STOR big.bin" and a["idle"] == 0
        assert b["transfer"] is None and b["command"] == "PASS ****" and b["idle"] >= 1.0
        assert c["command"] == "USER carol"
        for s in found:
            assert s["pid"] == proc.pid and s["client"].startswith("127.0.0.1:")
            assert time.time() - 60 < s["since"] <= time.time()
        assert {s["client"] for s in found} == {f"127.0.0.1:{f.sock.getsockname()[1]}" for f in clients}
        assert len({(s["pid"], s["id"]) for s in found}) == 3

        out = run_who(tree.root, "--json")
        assert out.returncode == 0, out.stderr
        parsed = json.loads(out.stdout)
        assert sorted(by_user(parsed), key=str) == sorted(users, key=str)
        assert set(parsed[0]) == {"pid", "id", "user", "client", "since", "idle", "command", "transfer"}
        text = run_who(tree.root)
        assert text.returncode == 0 and "3 sessions" in text.stdout
        assert "alice" in text.stdout and "upload /big.bin 256.0 KiB" in text.stdout
        for output in (out.stdout, text.stdout):
            assert "secret" not in output and "alice-pw" not in output  # passwords never shown

        assert upload.finish().startswith("226")
        assert wait_until(lambda: by_user(who.sessions(str(tree.root)))["alice"]["transfer"] is None)
        bob.voidcmd("NOOP")
        assert by_user(who.sessions(str(tree.root)))["bob"]["command"] == "NOOP"
        bob.quit()
        assert wait_until(lambda: "bob" not in by_user(who.sessions(str(tree.root))))
    finally:
        for ftp in clients:
            ftp.close()
        stop_logged(proc)
    assert state_entries(tree.root) == []  # a clean stop removes its socket


def test_a_download_shows_its_size_and_progress(tree):
    tree.user("alice", password="pw")
    with open(tree.root / "alice" / "huge.bin", "wb") as f:
        f.truncate(256 * 1024 * KiB)  # more than the socket buffers hold: the client reads at its pace
    proc, port = start_logged(tree.root)
    try:
        ftp = login(port, "alice", "pw")
        ftp.voidcmd("TYPE I")
        ftp.sendcmd("REST 1024")
        conn = ftp.transfercmd("RETR huge.bin")

        def transfer():
            return who.sessions(str(tree.root))[0]["transfer"]

        assert wait_until(lambda: transfer() is not None and transfer()["bytes"] > 0)
        first = transfer()
        assert first["direction"] == "download" and first["path"] == "/huge.bin"
        assert first["size"] == 256 * 1024 * KiB - 1024 and first["bytes"] < first["size"]
        got = 0
        while got < 8 * 1024 * KiB:
            got += len(conn.recv(1024 * KiB))
        assert wait_until(lambda: transfer()["bytes"] > first["bytes"])
        conn.close()
        ftp.close()
    finally:
        stop_logged(proc)


@pytest.mark.parametrize("concurrency", ["multi-thread", "multi-proc"])
def test_thread_and_process_servers(tree, concurrency):
    tree.user("alice", password="pw")
    tree.user("bob", password="pw")
    proc, port = start_logged(tree.root, "--concurrency", concurrency)
    clients = []
    try:
        clients = [login(port, "alice", "pw"), login(port, "bob", "pw")]
        upload = UploadInProgress(clients[0], "STOR up.bin")
        assert upload.send(b"z" * (32 * KiB))
        assert wait_until(lambda: upload_bytes(tree.root, "alice") == 32 * KiB)
        found = by_user(who.sessions(str(tree.root)))
        assert set(found) == {"alice", "bob"} and found["bob"]["transfer"] is None
        pids = {s["pid"] for s in found.values()}
        if concurrency == "multi-thread":
            assert pids == {proc.pid}
        else:  # a process per session, each answering for its own
            assert len(pids) == 2 and proc.pid not in pids
        assert upload.finish().startswith("226")
        clients[1].quit()
        assert wait_until(lambda: set(by_user(who.sessions(str(tree.root)))) == {"alice"})
        clients[0].quit()
        # the server itself still answers once its sessions (and their processes) are gone
        assert wait_until(lambda: who.sessions(str(tree.root)) == [])
        # a session's process ends a little after its session (pending timers); then its socket goes
        assert wait_until(lambda: state_entries(tree.root) == [f"{proc.pid}.sock"])
    finally:
        for ftp in clients:
            ftp.close()
        stop_logged(proc)
    assert state_entries(tree.root) == []  # the session processes' sockets too


def test_a_clean_stop_removes_the_sockets_of_session_processes(tree):
    """multi-proc: the server ends each session's process as it stops (no
    clean-up of their own): it removes their sockets too."""
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--concurrency", "multi-proc")
    clients = [login(port, "alice", "pw") for _ in range(3)]
    try:
        assert len(who.sessions(str(tree.root))) == 3 and len(state_entries(tree.root)) == 4
    finally:
        stop_logged(proc)
        for ftp in clients:
            ftp.close()
    assert state_entries(tree.root) == []


def test_workers_sessions_of_every_worker_are_listed(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--workers", "2")
    clients: list[ftplib.FTP] = []
    try:
        # the kernel hands connections to either worker: open sessions until both hold some
        while len(clients) < 60:
            clients.append(login(port, "alice", "pw"))
            pids = {s["pid"] for s in who.sessions(str(tree.root))}
            if len(clients) >= 4 and len(pids) == 2:
                break
        found = who.sessions(str(tree.root))
        assert len({s["pid"] for s in found}) == 2 and proc.pid not in {s["pid"] for s in found}
        assert sorted(s["client"] for s in found) == sorted(f"127.0.0.1:{f.sock.getsockname()[1]}"
                                                          for f in clients)
        assert len(state_entries(tree.root)) == 3  # the parent and each worker
        # a worker killed: its sessions and its socket go, the other's stay, its successor answers
        victim = found[0]["pid"]
        mine = [s["client"] for s in found if s["pid"] != victim]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: [s["client"] for s in who.sessions(str(tree.root))] == mine
                          and len(state_entries(tree.root)) == 3 and f"{victim}.sock" not in state_entries(tree.root))
    finally:
        for ftp in clients:
            ftp.close()
        stop_logged(proc)
    assert state_entries(tree.root) == []


def test_after_sigkill_who_says_no_server_and_cleans_up(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root)
    ftp = login(port, "alice", "pw")
    try:
        found = who.sessions(str(tree.root))
        assert [s["user"] for s in found] == ["alice"], found
        assert state_entries(tree.root) == [f"{proc.pid}.sock"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        ftp.close()
    out = run_who(tree.root)
    assert out.returncode == who.EXIT_NO_SERVER and out.stdout == ""
    assert "no xxftpd is running on" in out.stderr and "Traceback" not in out.stderr
    assert state_entries(tree.root) == []  # the dead socket is gone
    with pytest.raises(who.NoServer):
        who.sessions(str(tree.root))


def test_no_server_on_the_root(tree):
    tree.user("alice")
    out = run_who(tree.root, "--json")
    assert out.returncode == who.EXIT_NO_SERVER and out.stdout == ""
    assert out.stderr.strip() == f"xxftpd: no xxftpd is running on {tree.root} (no {tree.root}/.xxftpd)"
    assert not (tree.root / ".xxftpd").exists()  # asking creates nothing


def test_servers_on_other_roots_are_not_seen(tmp_path):
    from conftest import Tree
    one, two = Tree(tmp_path / "one"), Tree(tmp_path / "two")
    one.user("alice", password="pw")
    two.user("bob", password="pw")
    p1, port1 = start_logged(one.root)
    p2, port2 = start_logged(two.root)
    try:
        a, b = login(port1, "alice", "pw"), login(port2, "bob", "pw")
        assert [s["user"] for s in who.sessions(str(one.root))] == ["alice"]
        assert [s["user"] for s in who.sessions(str(two.root))] == ["bob"]
        a.close()
        b.close()
    finally:
        stop_logged(p1)
        stop_logged(p2)


# --- state folders not to trust

def refused(root, why: str) -> None:
    out = run_who(root)
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr, out
    assert why in out.stderr, out.stderr
    with pytest.raises(who.UnsafeState):
        who.sessions(str(root))


def test_a_state_folder_open_to_others_is_refused(tree):
    tree.user("alice", password="pw")
    state = tree.root / ".xxftpd"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    proc, port = start_logged(tree.root)
    try:
        login(port, "alice", "pw").close()
        refused(tree.root, "has mode 0755: only its owner may use it (0700)")
        assert os.listdir(state) == []  # the server did not use it either
    finally:
        log = stop_logged(proc)
    assert "`xxftpd who` will not see this server" in log and "0755" in log


def test_a_link_in_place_of_the_state_folder_is_refused(tmp_path):
    """A link to another root's state folder would show that server's
    sessions as this root's."""
    from conftest import Tree
    other, mine = Tree(tmp_path / "other"), Tree(tmp_path / "mine")
    other.user("alice", password="pw")
    mine.user("bob")
    proc, port = start_logged(other.root)
    try:
        ftp = login(port, "alice", "pw")
        os.symlink(other.root / ".xxftpd", mine.root / ".xxftpd")
        refused(mine.root, "is a symbolic link")
        (mine.root / ".xxftpd").unlink()
        (mine.root / ".xxftpd").write_text("planted")
        refused(mine.root, "is not a folder")
        ftp.close()
    finally:
        stop_logged(proc)


def test_a_planted_file_in_the_state_folder_is_refused(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root)
    try:
        ftp = login(port, "alice", "pw")
        planted = tree.root / ".xxftpd" / "12345.sock"
        planted.write_text("{}")
        refused(tree.root, ".xxftpd/12345.sock is not a socket")
        assert planted.exists()  # refused, not touched
        planted.unlink()
        assert [s["user"] for s in who.sessions(str(tree.root))] == ["alice"]
        ftp.close()
    finally:
        stop_logged(proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_state_folder_of_another_user_is_refused(tree):
    tree.user("alice", password="pw")
    state = tree.root / ".xxftpd"
    state.mkdir(mode=0o700)
    os.chown(state, 12345, 12345)
    refused(tree.root, "is owned by uid 12345, not by uid 0")
    proc, port = start_logged(tree.root)
    try:
        login(port, "alice", "pw").close()
        assert os.listdir(state) == []
    finally:
        log = stop_logged(proc)
    assert "`xxftpd who` will not see this server" in log


def test_a_process_that_hangs_is_reported_not_removed(tree):
    """A stopped (SIGSTOP) server accepts but can't answer: ``who`` says so
    and keeps its socket."""
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        out = run_who(tree.root)
        assert time.monotonic() - started < who.QUERY_TIMEOUT + 10
        assert out.returncode == 0 and "did not answer" in out.stderr and "Traceback" not in out.stderr
        # a session's process ends a little after its session (pending timers); then its socket goes
        assert wait_until(lambda: state_entries(tree.root) == [f"{proc.pid}.sock"])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_logged(proc)


# --- the rules, without a server

def test_passwords_are_masked():
    assert who.shown_command("PASS hunter2") == "PASS ****"
    assert who.shown_command("pass hunter2 with blanks") == "pass ****"
    assert who.shown_command("PASS") == "PASS"
    assert who.shown_command("ACCT secret") == "ACCT ****"
    assert who.shown_command("RETR " + "x" * 500) == ("RETR " + "x" * 500)[:who.COMMAND_SHOWN]


def test_records():
    r = who.record(7, 1, None, "::1", 2121, 100.0, 5.04, "USER x", None)
    assert r["client"] == "[::1]:2121" and r["idle"] == 5.0 and r["user"] is None
    t = who.transfer_record("upload", "/a", 1000, None, 0.5)
    assert t == {"direction": "upload", "path": "/a", "bytes": 1000, "size": None, "rate": 2000}
    assert who.record(7, 1, "a", "1.2.3.4", 1, 100.0, 9.0, "STOR a", t)["idle"] == 0.0
    table = who.table([who.record(7, 1, "a\x1bb", "1.2.3.4", 1, time.time(), 9.0, "NOOP\r", t)])
    assert "\x1b" not in table and "\r" not in table and "upload /a" in table


def test_unsafe_reasons():
    def st(mode, uid=0):
        return os.stat_result((mode, 0, 0, 0, uid, 0, 0, 0, 0, 0))
    assert who.unsafe_reason(st(stat.S_IFDIR | 0o700), 0) is None
    assert "mode 0750" in who.unsafe_reason(st(stat.S_IFDIR | 0o750), 0)
    assert "owned by uid 5" in who.unsafe_reason(st(stat.S_IFDIR | 0o700, 5), 0)
    assert who.unsafe_reason(st(stat.S_IFLNK | 0o777), 0) == "is a symbolic link"
    assert who.unsafe_reason(st(stat.S_IFREG | 0o600), 0) == "is not a folder"


def test_the_state_folder_is_out_of_ftp_reach(tree):
    """Not by a path out of the home, nor by a mount naming it as its
    target: no one can see, enter, read or remove it or its sockets."""
    tree.user("alice", password="pw", virtual="st $root/.xxftpd read,write,modify\n")
    proc, port = start_logged(tree.root)
    try:
        ftp = login(port, "alice", "pw")
        sock_name = f"{proc.pid}.sock"
        assert "st" not in ftp.nlst("/")
        for folder in ("/st", "/../.xxftpd", "/../../.xxftpd"):
            for cmd in (f"CWD {folder}", f"DELE {folder}/{sock_name}", f"RMD {folder}", f"MKD {folder}/x",
                        f"RNFR {folder}", f"SIZE {folder}/{sock_name}", f"MLST {folder}"):
                with pytest.raises(ftplib.error_perm):
                    ftp.sendcmd(cmd)
            for cmd in (f"RETR {folder}/{sock_name}", f"LIST {folder}"):
                with pytest.raises(ftplib.error_perm):
                    ftp.retrbinary(cmd, lambda data: None)
            with pytest.raises(ftplib.error_perm):
                ftp.storbinary(f"STOR {folder}/9.sock", io.BytesIO(b"x"))
        assert state_entries(tree.root) == [sock_name]
        assert [s["user"] for s in who.sessions(str(tree.root))] == ["alice"]
        ftp.close()
    finally:
        stop_logged(proc)


def test_ftps_sessions(tree, tmp_path):
    from conftest import ResumingFTP_TLS
    from xxftp_pyftpdlib import certs
    cert, key = certs.self_signed(str(tmp_path / "tls"))
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--tls", "--certfile", cert, "--keyfile", key)
    try:
        import ssl
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        ftp = ResumingFTP_TLS(context=context)
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        ftp.prot_p()
        upload = UploadInProgress(ftp, "STOR secret.bin")
        assert upload.send(b"s" * (48 * KiB))
        assert wait_until(lambda: upload_bytes(tree.root, "alice") == 48 * KiB)
        assert by_user(who.sessions(str(tree.root)))["alice"]["command"] == "STOR secret.bin"
        assert upload.finish().startswith("226")
        ftp.close()
    finally:
        stop_logged(proc)


def test_two_servers_on_one_root_are_both_listed(tree):
    tree.user("alice", password="pw")
    p1, port1 = start_logged(tree.root)
    p2, port2 = start_logged(tree.root)
    try:
        a, b = login(port1, "alice", "pw"), login(port2, "alice", "pw")
        assert sorted(s["pid"] for s in who.sessions(str(tree.root))) == sorted([p1.pid, p2.pid])
        a.close()
        b.close()
    finally:
        stop_logged(p1)
    assert [s["pid"] for s in who.sessions(str(tree.root))] in ([], [p2.pid])  # the other one still runs
    stop_logged(p2)
    assert state_entries(tree.root) == []


def test_an_answer_for_another_root_or_garbage_is_ignored(tree, caplog):
    """A socket under our name that answers for another root, or answers
    garbage, adds no sessions (and is not removed: it is alive)."""
    import threading
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root)
    fakes = []
    try:
        ftp = login(port, "alice", "pw")
        for pid, reply in ((999999, who.answer(1, "/elsewhere", [who.record(1, 1, "mallory", "1.2.3.4", 1, 0.0,
                                                                                 0.0, "NOOP", None)])),
                           (999998, b"not json"), (999997, b'{"sessions": [{"user": "eve"}], "root": "%s"}'
                                                   % str(tree.root).encode())):
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(tree.root / ".xxftpd" / f"{pid}.sock"))
            server.listen()
            fakes.append(server)

            def answer(server=server, reply=reply):
                while True:
                    try:
                        conn, _ = server.accept()
                    except OSError:
                        return
                    with conn:
                        conn.sendall(reply)
            threading.Thread(target=answer, daemon=True).start()
        assert [s["user"] for s in who.sessions(str(tree.root))] == ["alice"]
        assert "answers for another root (/elsewhere)" in caplog.text and "gave no valid answer" in caplog.text
        assert len(state_entries(tree.root)) == 4
        ftp.close()
    finally:
        for server in fakes:
            server.shutdown(socket.SHUT_RDWR)  # wakes its accept (close alone would not)
            server.close()
        stop_logged(proc)
    assert state_entries(tree.root) == []  # the fakes refuse now: the server's sweep removed them
