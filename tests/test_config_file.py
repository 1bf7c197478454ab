"""--config: a TOML file sets serving flags; flags win; bad keys are named."""

from __future__ import annotations

import ftplib
import signal
import subprocess
import sys

import pytest

from conftest import HOST, free_port, run_xxftpd
from xxftp_pyftpdlib.cli import build_parser, load_config
from xxftp_pyftpdlib.server import ConfigError


def test_every_serving_flag_can_be_set(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('root = "r"\nhost = "127.0.0.1"\nport = 2000\npassive-ports = [60000, 60010]\n'
                    'masquerade_address = "10.0.0.1"\nmax_cons = 5\nmax_cons_per_ip = 2\ntimeout = 9\n'
                    'concurrency = "multi-thread"\nlog_level = "debug"\nlog_file = "l.log"\n'
                    'upload_mode = "standard"\nupgrade_hashes = true\ntls = true\ncertfile = "c.pem"\n'
                    'keyfile = "k.pem"\ntls_control_required = true\ntls_data_required = true\n')
    parser = build_parser()
    parser.set_defaults(**load_config(parser, str(path)))
    args = parser.parse_args(["--port", "2001"])
    assert (args.root, args.port, args.passive_ports, args.max_cons, args.concurrency) == ("r", 2001, (60000, 60010), 5, "multi-thread")
    assert args.tls and args.upgrade_hashes and args.upload_mode == "standard" and args.masquerade_address == "10.0.0.1"


@pytest.mark.parametrize("text, needle", [
    ("prot = 1", "unknown key 'prot'"),
    ('port = "2121"', "key 'port' must be an integer"),
    ("port = 70000", "key 'port': port 70000 out of range"),
    ('tls = "yes"', "key 'tls' must be true or false"),
    ('concurrency = "fast"', "key 'concurrency' must be one of"),
    ('passive_ports = "9-1"', "key 'passive_ports': invalid port range"),
    ("max_cons = true", "key 'max_cons' must be an integer"),
    ("port = ", "config"),
    ("command = 'x'", "unknown key 'command'"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=needle):
        load_config(build_parser(), str(path))
    done = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("xxftpd: error:") and needle in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_config_serves_and_flags_override(tree, tmp_path):
    tree.user("bob")
    port = free_port()
    path = tmp_path / "serve.toml"
    path.write_text(f'root = "{tree.root}"\nhost = "{HOST}"\nport = 1\nlog_level = "debug"\n')
    proc = run_xxftpd("--config", str(path), "--port", str(port), wait_for_port=port)
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        assert ftp.sendcmd("USER bob").startswith("230")
        ftp.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "<- USER bob" in err  # log_level from the file: debug logs every command
