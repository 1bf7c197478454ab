"""One-time codes (``.xxftp/totp``): PASS <password><code>, each code once.

Over real sockets against the real server (ftplib), codes made by pyotp
for chosen times; the ``xxftpd totp`` command's output read back as an
authenticator app would.
"""

from __future__ import annotations

import ftplib
import os
import random
import socket
import statistics
import threading
import time

import pyotp
import pytest

from conftest import HOST, run_xxftpd, start_logged, stop_logged
from xxftp_pyftpdlib import passwords, totp
from xxftp_pyftpdlib.checks import check_tree

PASSWORD = "s3cret"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def steady() -> float:
    """Now, at least 4 s before the current 30 s step ends: a code made
    for a step around now is still judged by the same step when it arrives."""
    if time.time() % totp.STEP > totp.STEP - 4:
        time.sleep(totp.STEP - time.time() % totp.STEP + 0.1)
    return time.time()


def code_at(when: float, secret: str = SECRET) -> str:
    return pyotp.TOTP(secret).at(when)


@pytest.fixture
def bob(tree):
    """A user with a scrypt password and a second factor."""
    home = tree.user("bob")
    tree.xxftp(home, "password", passwords.scrypt_hash(PASSWORD) + "\n")
    tree.xxftp(home, "totp", SECRET + "\n").chmod(0o600)
    tree.user("carol", password=PASSWORD)  # no second factor
    return home


def login(port: int, user: str, password: str) -> str:
    """The reply to PASS on a fresh session ("230 ..." or the error)."""
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=20)
    try:
        return ftp.login(user, password)
    except ftplib.error_perm as err:
        return str(err)
    finally:
        ftp.close()


def test_password_and_right_code_log_in_and_a_wrong_or_missing_code_does_not(bob, start_server):
    srv = start_server(bob.parent)
    now = steady()
    right = code_at(now)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    assert login(srv.port, "bob", PASSWORD + wrong).startswith("530")
    assert login(srv.port, "bob", PASSWORD).startswith("530")  # the password alone
    assert login(srv.port, "bob", "wrong" + right).startswith("530")  # the code with a wrong password
    assert login(srv.port, "bob", right).startswith("530")  # the code alone
    assert login(srv.port, "bob", PASSWORD + right).startswith("230")
    # a user without a totp file logs in with the password alone, as before
    assert login(srv.port, "carol", PASSWORD).startswith("230")
    assert login(srv.port, "carol", PASSWORD + right).startswith("530")


def test_a_code_is_used_once_across_sessions(bob, start_server):
    srv = start_server(bob.parent)
    now = steady()
    first = ftplib.FTP()
    first.connect(HOST, srv.port, timeout=20)
    assert first.login("bob", PASSWORD + code_at(now)).startswith("230")
    # a second session, the first still open, with the same code: refused
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("530")
    first.quit()
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("530")
    # an older code after a newer one: refused too; the next step's code works once
    assert login(srv.port, "bob", PASSWORD + code_at(now - 30)).startswith("530")
    assert login(srv.port, "bob", PASSWORD + code_at(now + 30)).startswith("230")
    assert login(srv.port, "bob", PASSWORD + code_at(now + 30)).startswith("530")
    assert (bob / ".xxftp/totp.used").stat().st_mode & 0o777 == 0o600


def test_a_login_refused_by_its_hosts_file_leaves_the_code_unused(bob, tree, start_server):
    """The right password and code from an address .xxftp/hosts refuses
    spend nothing: the user logs in with that same code from a good one."""
    tree.xxftp(bob, "hosts", "127.0.0.7\n")
    srv = start_server(bob.parent)
    now = steady()
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("530")  # from 127.0.0.1
    good = ftplib.FTP(source_address=("127.0.0.7", 0))
    good.connect(HOST, srv.port, timeout=20)
    assert good.login("bob", PASSWORD + code_at(now)).startswith("230")
    good.quit()


@pytest.mark.parametrize("offset, accepted", [(-30, True), (30, True), (-60, False), (60, False)],
                         ids=["behind-1", "ahead-1", "behind-2", "ahead-2"])
def test_one_step_of_clock_drift_either_way_is_accepted_and_two_are_not(bob, start_server, offset, accepted):
    srv = start_server(bob.parent)
    now = steady()
    reply = login(srv.port, "bob", PASSWORD + code_at(now + offset))
    assert reply.startswith("230" if accepted else "530"), reply


def test_the_same_code_sent_at_once_to_several_worker_processes_logs_in_once(bob, tmp_path):
    """Eight sessions offer one code at the same moment to a server of two
    ``--workers`` processes: the used step is shared through the file, so
    exactly one is let in."""
    proc, port = start_logged(bob.parent, "--workers", "2", "--max-cons-per-ip", "0",
                              "--max-unauthenticated-per-ip", "0")
    try:
        now = steady()
        code = code_at(now)
        sessions = []
        for _ in range(8):
            raw = socket.create_connection((HOST, port), timeout=20)
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"USER bob\r\n")
            assert f.readline().startswith(b"331")
            sessions.append((raw, f))
        gate = threading.Barrier(len(sessions))
        replies: list[bytes] = []

        def offer(raw, f):
            gate.wait()
            raw.sendall(f"PASS {PASSWORD}{code}\r\n".encode())
            replies.append(f.readline())

        threads = [threading.Thread(target=offer, args=s) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for raw, f in sessions:
            f.close()
            raw.close()
        assert sorted(r[:3] for r in replies) == [b"230"] + [b"530"] * 7, replies
    finally:
        log = stop_logged(proc)
    assert log.count("one-time code already used") == 7, log[-3000:]


def test_a_bad_secret_file_refuses_the_login_and_check_says_why(bob, start_server, caplog):
    srv = start_server(bob.parent)
    secret_file = bob / ".xxftp/totp"
    now = steady()
    secret_file.write_text("not base32 at all!\n")
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("530")
    assert "not base32" in caplog.text
    found = [str(f) for f in check_tree(str(bob.parent))]
    assert any("totp:1:" in f and "not base32" in f for f in found), found
    secret_file.write_text("JBSWY3DPEHPK3PXP\n")  # 80 bits: too short
    assert any("at least 128" in str(f) for f in check_tree(str(bob.parent)))
    # readable by others: ignored by the server, an error for check
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("530")
    assert "lets others read it" in caplog.text
    found = [str(f) for f in check_tree(str(bob.parent)) if "totp" in str(f)]
    assert found and "0644" in found[0] and "(warning)" not in found[0], found
    secret_file.chmod(0o600)  # hot: the next login sees the fixed file
    assert not [f for f in check_tree(str(bob.parent)) if "totp" in str(f)]
    assert login(srv.port, "bob", PASSWORD + code_at(now)).startswith("230")


def test_spaced_lower_case_secrets_are_read_as_apps_show_them(bob, start_server):
    (bob / ".xxftp/totp").write_text("# bob's phone\n" + " ".join(SECRET.lower()[i:i + 4] for i in range(0, 32, 4)) + "\n")
    srv = start_server(bob.parent)
    assert login(srv.port, "bob", PASSWORD + code_at(steady())).startswith("230")


def test_a_totp_user_without_pyotp_is_refused_with_one_log_line(bob, tmp_path):
    """The real server on a Python where ``import pyotp`` fails."""
    blocker = tmp_path / "nopyotp"
    blocker.mkdir()
    (blocker / "pyotp.py").write_text("raise ImportError('pyotp is blocked for this test')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc, port = start_logged(bob.parent, env=env)
    try:
        assert login(port, "bob", PASSWORD + code_at(steady())).startswith("530")
        assert login(port, "carol", PASSWORD).startswith("230")  # others are not concerned
    finally:
        log = stop_logged(proc)
    lines = [line for line in log.splitlines() if "'bob'" in line and "USER 'bob'" not in line]
    assert len(lines) == 1 and "pyotp" in lines[0] and "not installed" in lines[0], log[-2000:]


def test_the_totp_command_makes_a_secret_that_logs_in(bob, tree, start_server):
    home = tree.user("dave")
    tree.xxftp(home, "password", passwords.md5_hex(PASSWORD) + "\n")
    run = run_xxftpd("--root", str(tree.root), "totp", "dave")
    out, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    uris = [line for line in out.splitlines() if line.startswith("otpauth://")]
    assert len(uris) == 1, out
    app = pyotp.parse_uri(uris[0])
    assert app.issuer == "xxftpd" and app.name == "dave" and app.digits == 6 and app.interval == 30
    assert sum("█" in line for line in out.splitlines()) > 15  # the QR code
    secret_file = home / ".xxftp/totp"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.read_text().strip() == app.secret
    srv = start_server(tree.root)
    now = steady()
    assert login(srv.port, "dave", PASSWORD + app.at(now)).startswith("230")
    # never overwritten without --force
    again = run_xxftpd("--root", str(tree.root), "totp", "dave")
    out, err = again.communicate(timeout=30)
    assert again.returncode == 1 and "--force" in err
    assert secret_file.read_text().strip() == app.secret
    forced = run_xxftpd("--root", str(tree.root), "totp", "dave", "--force")
    out, err = forced.communicate(timeout=30)
    assert forced.returncode == 0, err
    new = pyotp.parse_uri(next(line for line in out.splitlines() if line.startswith("otpauth://")))
    assert new.secret != app.secret
    assert login(srv.port, "dave", PASSWORD + new.at(now + 30)).startswith("230")
    nobody = run_xxftpd("--root", str(tree.root), "totp", "nobody")
    assert nobody.wait(30) == 2
    table = run_xxftpd("--root", str(tree.root), "users").communicate(timeout=30)[0]
    assert any(line.split()[:4] == ["dave", "md5", "+", "totp"] for line in table.splitlines()), table


# --- timing: an unknown user, a wrong password and a wrong code cost the same


def _pass_time(port: int, user: str, password: str) -> tuple[float, str]:
    with socket.create_connection((HOST, port), timeout=30) as sock, sock.makefile("rb") as f:
        f.readline()
        sock.sendall(f"USER {user}\r\n".encode())
        assert f.readline().startswith(b"331")
        sock.sendall(f"PASS {password}\r\n".encode())
        t0 = time.perf_counter()
        reply = f.readline().decode()
        return time.perf_counter() - t0, reply


def test_a_wrong_code_costs_what_a_wrong_password_and_an_unknown_user_cost(bob, start_server):
    """30 refusals of each kind, interleaved in random order; medians within
    5 ms of the unknown user's and ranges overlapping (up to 120 rounds on a
    busy machine, the medians taken over all of them, as in test_login_checks)."""
    srv = start_server(bob.parent, auth_failed_timeout=0)

    def kinds() -> dict[str, tuple[str, str]]:
        right = code_at(time.time())
        wrong = f"{(int(right) + 500000) % 10**6:06d}"
        return {"unknown user": ("nobody", PASSWORD + right), "wrong password": ("bob", "wrong!" + right),
                "wrong code": ("bob", PASSWORD + wrong), "no code": ("bob", PASSWORD),
                "other user, wrong password": ("carol", "wrong!")}

    times: dict[str, list[float]] = {kind: [] for kind in kinds()}
    _pass_time(srv.port, "nobody", "x")  # warm up
    for _ in range(4):
        for _ in range(30):
            order = list(kinds().items())
            random.shuffle(order)
            for kind, (user, password) in order:
                secs, reply = _pass_time(srv.port, user, password)
                assert reply.startswith("530"), (kind, reply)
                times[kind].append(secs)
        base = times["unknown user"]
        found = [f"{kind}: median {statistics.median(s) * 1000:.1f} ms against {statistics.median(base) * 1000:.1f} ms"
                 for kind, s in times.items()
                 if abs(statistics.median(s) - statistics.median(base)) > 0.005
                 or min(s) > max(base) or max(s) < min(base)]
        if not found:
            return
    pytest.fail("; ".join(found))


# --- the rules, without a server


def test_normalize_reads_secrets_as_apps_write_them_and_refuses_weak_ones():
    assert totp.normalize("jbsw y3dp ehpk 3pxp jbsw y3dp ehpk 3pxp") == SECRET
    assert totp.normalize(SECRET + "======") == SECRET
    for bad, why in (("", "no secret"), ("JBSWY3DP!", "not base32"), ("A" * 33, "not valid base32"),
                     ("JBSWY3DPEHPK3PXP", "80 bits")):
        with pytest.raises(ValueError, match=why):
            totp.normalize(bad)


def test_check_accepts_one_step_either_side_and_never_matches_without_a_secret():
    now = 1_700_000_000.0
    step = int(now // 30)
    for offset in (-1, 0, 1):
        assert totp.check(SECRET, code_at(now + 30 * offset), now) == step + offset
    for offset in (-2, 2):
        assert totp.check(SECRET, code_at(now + 30 * offset), now) is None
    assert totp.check(None, code_at(now), now) is None
    assert totp.check(SECRET, "", now) is None and totp.check(SECRET, "12345é", now) is None
    assert totp.split("pw123456") == ("pw", "123456") and totp.split("12345") == ("12345", "")


def test_recorded_steps_only_move_forward(tmp_path):
    from xxftp_pyftpdlib import totpstate
    assert totpstate.record(str(tmp_path), 100)
    assert not totpstate.record(str(tmp_path), 100) and not totpstate.record(str(tmp_path), 99)
    assert totpstate.record(str(tmp_path), 101)
    (tmp_path / totpstate.USED).write_text("garbage\n")  # counts as no step used (and is logged)
    assert totpstate.record(str(tmp_path), 5)
    (tmp_path / totpstate.USED).chmod(0o666)
    with pytest.raises(PermissionError, match="not trusted"):
        totpstate.record(str(tmp_path), 6)
