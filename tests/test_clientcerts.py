"""The ``.xxftp/certs`` rules (``clientcerts``), without a socket."""

from __future__ import annotations

from xxftp_pyftpdlib import clientcerts
from xxftp_pyftpdlib.clientcerts import CertRule, Way, parse_certs, parse_fingerprint, way

FP = bytes(range(32))


def test_fingerprints_with_or_without_colons_in_any_case():
    plain = FP.hex()
    assert parse_fingerprint(plain) == FP
    assert parse_fingerprint(plain.upper()) == FP
    assert parse_fingerprint(":".join(plain[i:i + 2] for i in range(0, 64, 2)).upper()) == FP
    for bad in (plain[:-2], plain + "00", "zz" * 32, plain[:2] + ":" + plain[2:], "sha256:" + plain, ""):
        assert parse_fingerprint(bad) is None, bad


def test_parse_certs_lines_comments_and_and_password():
    text = f"# alice's laptop\n{FP.hex()}  # trailing comment\n\n{FP.hex().upper()}\nAND-PASSWORD\n"
    parsed = parse_certs(text, "/h/.xxftp/certs")
    assert parsed.value == CertRule((FP,), and_password=True) and not parsed.problems
    assert parse_certs(FP.hex() + "\n", "p").value == CertRule((FP,), and_password=False)


def test_a_bad_line_is_reported_and_makes_the_password_needed_too():
    parsed = parse_certs(f"{FP.hex()}\nand_password\n", "/h/.xxftp/certs")
    assert [str(p) for p in parsed.problems] == [
        "/h/.xxftp/certs:2: not a SHA-256 fingerprint nor 'and-password': 'and_password' "
        "(skipped; the password is needed as well)"]
    assert parsed.value == CertRule((FP,), and_password=True)  # a mistyped and-password still counts


def test_the_ways_to_log_in():
    other = bytes(32)
    listed = CertRule((other, FP))
    assert way(None, FP) is Way.PASSWORD  # no certs file
    assert way(listed, FP) is Way.CERTIFICATE
    assert way(listed, bytes([1]) * 32) is Way.PASSWORD  # not listed: nothing extra
    assert way(listed, None) is Way.PASSWORD
    both = CertRule((FP,), and_password=True)
    assert way(both, FP) is Way.PASSWORD  # the password is still needed
    assert way(both, None) is Way.REFUSED and way(both, other) is Way.REFUSED
    assert way(clientcerts.UNREADABLE, FP) is Way.REFUSED
