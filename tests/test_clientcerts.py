"""The ``.xxftp/certs`` rules (``clientcerts``), without a socket."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


_HEXES = st.binary(min_size=32, max_size=32).map(bytes.hex)
CERT_LINE = st.one_of(
    _HEXES, _HEXES.map(str.upper), _HEXES.map(lambda h: ":".join(h[i:i + 2] for i in range(0, 64, 2))),
    st.sampled_from(["and-password", "AND-PASSWORD", "and_password", "# comment", "", "  ", "sha256:ab",
                     "ab" * 31, "ab" * 33]),
    st.text(max_size=80))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(CERT_LINE, max_size=12))
def test_parse_certs_never_raises_and_keeps_to_the_safe_side(lines):
    text = "\n".join(lines)
    parsed = parse_certs(text, "c")
    rule = parsed.value
    meaningful = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for problem in parsed.problems:
        assert problem.path == "c" and meaningful[problem.line - 1]
    assert all(len(f) == 32 for f in rule.fingerprints)
    assert len(set(rule.fingerprints)) == len(rule.fingerprints)
    if parsed.problems:  # a bad line: never the certificate alone
        assert rule.and_password
        assert all(way(rule, f) is not Way.CERTIFICATE for f in rule.fingerprints)
    for line in meaningful:
        value = parse_fingerprint(line)
        if value is not None:
            assert value in rule.fingerprints and way(rule, value) is not Way.REFUSED
