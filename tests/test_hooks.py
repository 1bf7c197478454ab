"""--on-upload, --on-login, --on-delete: hooks run by the real server, with
their argument and environment, bounded, killed at their timeout, and
never holding up a reply."""

from __future__ import annotations

import ftplib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST, free_port, run_xxftpd, start_logged, stop_logged, store, upload, wait_until

RECORDER = """#!/bin/sh
# hook.sh OUT EVENT ARG...: what it got, one file per run
out=$1; event=$2; shift 2
f=$(mktemp "$out/$event.XXXXXX")
{ printf 'arg=%s\\n' "$@"; env; } > "$f.tmp"
mv "$f.tmp" "$f"
"""

# Counts the runs going on at once (under flock), and the most ever seen.
COUNTER = """#!/bin/sh
d=$1
( flock 9; n=$(($(cat "$d/now") + 1)); echo $n > "$d/now"
  [ $n -gt $(cat "$d/max") ] && echo $n > "$d/max" ) 9>"$d/lock"
sleep 0.05
( flock 9; echo $(($(cat "$d/now") - 1)) > "$d/now"; echo x >> "$d/done" ) 9>"$d/lock"
"""


def _script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _runs(out: Path, event: str) -> list[dict]:
    """What each finished run of ``event`` got: its arguments and environment."""
    runs = []
    for path in sorted(out.glob(f"{event}.*")):
        if path.name.endswith(".tmp"):
            continue
        args, env = [], {}
        for line in path.read_text().splitlines():
            if line.startswith("arg="):
                args.append(line[4:])
            elif "=" in line:
                key, _, value = line.partition("=")
                env[key] = value
        runs.append({"args": args, "env": env})
    return runs


@pytest.fixture
def served(tree):
    tree.user("alice", password="pw", virtual="docs $root/d read,write,modify\n")
    tree.file("d/old.txt", b"old")
    return tree


MODES = {"async": (), "multi-thread": ("--concurrency", "multi-thread"), "multi-proc": ("--concurrency", "multi-proc"),
         "workers": ("--workers", "2")}


@pytest.mark.parametrize("mode", MODES)
def test_hooks_get_their_argument_and_environment(served, tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    hook = _script(tmp_path, "hook.sh", RECORDER)
    env = dict(os.environ, XXFTPD_TEST_SECRET="s3cret", DATABASE_PASSWORD="hunter2")
    proc, port = start_logged(served.root, "--on-upload", f"{hook} {out} upload",
                              "--on-login", f"{hook} {out} login", "--on-delete", f"'{hook}' {out} delete",
                              *MODES[mode], env=env)
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        upload(ftp, "/docs/new file.bin", b"x" * 1234)  # atomic mode: a temporary renamed into place
        upload(ftp, "/docs/old.txt", b"replaced")  # an overwrite, also renamed into place
        ftp.delete("/docs/old.txt")
        with pytest.raises(ftplib.error_perm):
            ftp.delete("/docs/missing")  # refused: no hook
        ftp.quit()
        assert wait_until(lambda: len(list(out.glob("[uld]*.??????"))) >= 4, 10)
    finally:
        stop_logged(proc)
    root = served.root.resolve()
    logins, uploads, deletes = _runs(out, "login"), _runs(out, "upload"), _runs(out, "delete")
    assert len(logins) == 1 and len(uploads) == 2 and len(deletes) == 1, (logins, uploads, deletes)
    assert logins[0]["args"] == ["alice"]
    assert logins[0]["env"]["XXFTPD_USER"] == "alice" and logins[0]["env"]["XXFTPD_CLIENT"] == "127.0.0.1"
    by_path = {run["args"][0]: run["env"] for run in uploads}
    new, old = str(root / "d" / "new file.bin"), str(root / "d" / "old.txt")
    assert set(by_path) == {new, old}  # the final names, never a temporary's
    assert by_path[new]["XXFTPD_FTP_PATH"] == "/docs/new file.bin" and by_path[new]["XXFTPD_SIZE"] == "1234"
    assert by_path[old]["XXFTPD_SIZE"] == "8" and by_path[new]["XXFTPD_USER"] == "alice"
    assert by_path[new]["XXFTPD_CLIENT"] == "127.0.0.1" and by_path[new]["XXFTPD_EVENT"] == "upload"
    assert "XXFTPD_SHA256" not in by_path[new]  # no hash at hand on this server
    assert deletes[0]["args"] == [old]
    assert deletes[0]["env"]["XXFTPD_FTP_PATH"] == "/docs/old.txt" and deletes[0]["env"]["XXFTPD_USER"] == "alice"
    for run in logins + uploads + deletes:
        extra = {k for k in run["env"] if not k.startswith("XXFTPD_")} - {"PATH", "PWD", "SHLVL", "_", "OLDPWD"}
        assert not extra, extra  # a minimal environment: the server's secrets stay out
        assert "XXFTPD_TEST_SECRET" not in run["env"]


def test_hanging_hook_is_killed_and_reply_does_not_wait(served, tmp_path):
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    hang = _script(tmp_path, "hang.sh", f"#!/bin/sh\nsleep 3{marker} &\nsleep 3{marker}\n")
    proc, port = start_logged(served.root, "--on-upload", str(hang), "--hook-timeout", "3")
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        started = time.monotonic()
        assert store(ftp, "/a.bin", b"a").startswith("226")
        assert store(ftp, "/b.bin", b"b").startswith("226")
        assert time.monotonic() - started < 2.5  # the replies never waited for the hooks (3 s each)

        def sleepers() -> int:
            return sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).endswith(marker))

        assert wait_until(lambda: sleepers() == 4, 2.5)  # both hooks run (concurrency 4), each with its child
        assert wait_until(lambda: sleepers() == 0, 8)  # killed at the timeout, the child too
        ftp.quit()
    finally:
        text = stop_logged(proc)
    lines = [line for line in text.splitlines() if "timed out after 3 s: process group killed" in line]
    assert len(lines) == 2 and "a.bin" in lines[0] + lines[1], text


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_failures_are_one_line_each(served, tmp_path):
    gone = _script(tmp_path, "gone.sh", "#!/bin/sh\n")
    proc, port = start_logged(served.root, "--on-login", "sh -c 'echo said-this; exit 3'",
                              "--on-upload", str(gone), "--log-level", "debug")
    try:
        gone.unlink()  # it was there at start-up: now it can't start
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        assert store(ftp, "/a.bin", b"a").startswith("226")  # the reply knows nothing of the hook
        ftp.quit()
        wait_until(lambda: "cannot start" in Path(proc.log).read_text(), 5)
        wait_until(lambda: "status 3" in Path(proc.log).read_text(), 5)
    finally:
        text = stop_logged(proc)
    assert sum("hook upload: cannot start" in line for line in text.splitlines()) == 1, text
    assert sum("hook login for alice exited with status 3" in line for line in text.splitlines()) == 1, text
    assert "hook login output for alice: said-this" in text  # the output, at debug


def test_flood_is_bounded_and_replies_are_prompt(served, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    for name in ("now", "max"):
        (state / name).write_text("0\n")
    counter = _script(tmp_path, "count.sh", COUNTER)
    proc, port = start_logged(served.root, "--on-upload", f"{counter} {state}", "--hook-concurrency", "3")
    slowest = []
    try:
        def client(number: int) -> None:
            ftp = ftplib.FTP()
            ftp.connect(HOST, port, timeout=10)
            ftp.login("alice", "pw")
            worst = 0.0
            for i in range(50):
                started = time.monotonic()
                assert store(ftp, f"/f{number}-{i}", b"x").startswith("226")
                worst = max(worst, time.monotonic() - started)
            slowest.append(worst)
            ftp.quit()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(slowest) == 4  # every upload got its 226
        assert wait_until(lambda: (state / "done").exists() and len((state / "done").read_text().split()) == 200, 60)
    finally:
        text = stop_logged(proc)
    most = int((state / "max").read_text())
    assert 2 <= most <= 3, most  # never more than the bound (and it did run several at once)
    assert max(slowest) < 2.0, slowest  # no upload waited for the hooks (bound kept loose for busy machines)
    assert "dropped" not in text and "hook upload" not in text  # no failure, no overflow


def test_a_bad_hook_command_stops_the_start(tree, tmp_path):
    tree.user("alice", password="pw")
    for command, why in (("/no/such/program", "not found or not executable"), ("'unclosed", "closing quotation")):
        proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(free_port()),
                          "--on-upload", command)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 1 and err.startswith("xxftpd: error: --on-upload: ") and why in err, err
        assert "Traceback" not in err


def test_hook_from_the_config_file(tree, tmp_path):
    tree.user("alice", password="pw")
    out = tmp_path / "out"
    out.mkdir()
    hook = _script(tmp_path, "hook.sh", RECORDER)
    config = tmp_path / "x.toml"
    config.write_text(f'on_login = "{hook} {out} login"\nhook_timeout = 5\nhook_concurrency = 1\n'
                      'log_format = "json"\n')
    proc, port = start_logged(tree.root, "--config", str(config))
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        ftp.quit()
        assert wait_until(lambda: len(_runs(out, "login")) == 1, 10)
    finally:
        text = stop_logged(proc)
    assert text.startswith("{")  # log_format from the file too


def test_a_full_queue_drops_runs_with_a_warning(tmp_path, caplog):
    from xxftp_pyftpdlib.hooks import HookRunner, parse_command
    done = tmp_path / "done"
    script = _script(tmp_path, "slow.sh", f"#!/bin/sh\nsleep 0.3\necho \"$1\" >> {done}\n")
    runner = HookRunner({"upload": parse_command(str(script))}, concurrency=1, timeout=5, queue_size=2)
    caplog.set_level(logging.WARNING, logger="xxftpd.hooks")
    accepted = [runner.submit("upload", f"/f{i}", SIZE=1) for i in range(10)]  # never blocks
    assert 2 <= sum(accepted) <= 3  # one running (maybe not started yet) and two waiting
    drops = [r for r in caplog.records if "dropped: 2 runs already waiting" in r.getMessage()]
    assert len(drops) == 10 - sum(accepted)
    runner.drain()
    assert len(done.read_text().split()) == sum(accepted)
    assert runner.submit("login", "alice") is False  # no such hook


def test_parse_command():
    from xxftp_pyftpdlib.hooks import parse_command
    assert parse_command("sh -c 'echo a b'") == ["sh", "-c", "echo a b"]
    for bad in ("", "   ", "'open", "/no/such/thing arg"):
        with pytest.raises(ValueError):
            parse_command(bad)


def test_output_is_bounded_and_a_lingering_child_does_not_hold_the_run(tmp_path, caplog):
    from xxftp_pyftpdlib.hooks import OUTPUT_LIMIT, HookRunner, Run
    runner = HookRunner({"upload": ["sh"]}, concurrency=1, timeout=5)
    caplog.set_level(logging.DEBUG, logger="xxftpd.hooks")
    env = {"PATH": os.environ["PATH"]}
    started = time.monotonic()
    assert runner.run(Run("upload", ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x", "/a"], env)) == 0
    (output,) = [r.getMessage() for r in caplog.records if "output for /a" in r.getMessage()]
    assert output.count("x") == OUTPUT_LIMIT
    # a hook that leaves a child holding its output open is done when it exits
    marker = f"7{os.getpid()}"
    script = f"sleep {marker} & echo started"
    assert runner.run(Run("upload", ["sh", "-c", script, "/b"], env)) == 0
    assert time.monotonic() - started < 4
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]
    for pid in os.listdir("/proc"):  # (the child is left alone: end it here)
        if pid.isdigit() and _cmdline(pid) == f"sleep {marker}":
            os.kill(int(pid), signal.SIGKILL)


def test_a_hook_that_cannot_be_queued_costs_the_upload_nothing(tree, start_server, connect, caplog):
    """The runner itself failing (no thread to be had, say) is logged;
    the upload still gets its 226, is kept, and the session goes on."""

    class Broken:
        def wants(self, event: str) -> bool:
            return event == "upload"

        def submit(self, event: str, *args, **kwargs) -> None:
            if event == "upload":
                raise RuntimeError("can't start new thread")

    tree.user("alice")
    ftp = connect(start_server(tree.root, hooks=Broken()).port, "alice")
    assert store(ftp, "a.txt", b"kept").startswith("226")
    assert ftp.sendcmd("NOOP").startswith("200")
    assert (tree.root / "alice" / "a.txt").read_bytes() == b"kept"
    assert "after the upload of" in caplog.text


def test_hooks_whose_threads_cannot_start_cost_no_login_nor_upload(tree, start_server, connect, tmp_path,
                                                                     monkeypatch, caplog):
    """A process out of threads drops its runs (one warning each); the
    login, the upload and the delete are answered as ever."""
    from xxftp_pyftpdlib import hooks

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(hooks.HookRunner, "_queue_here", no_thread)
    runner = hooks.HookRunner({event: ["/bin/true"] for event in ("upload", "login", "delete")})
    tree.user("alice")
    ftp = connect(start_server(tree.root, hooks=runner).port, "alice")
    assert store(ftp, "a.txt", b"kept").startswith("226")
    assert ftp.delete("a.txt").startswith("250")
    assert ftp.sendcmd("NOOP").startswith("200")
    assert caplog.text.count("cannot start its threads") == 3

