"""Client addresses on IPv4, IPv6 and a dual-stack listener.

Rules that live here:

- By default the server listens on ``::`` with ``IPV6_V6ONLY`` off: one
  socket takes IPv4 and IPv6 clients alike (``ALL``). A machine without
  IPv6 listens on ``0.0.0.0`` instead. ``--host 0.0.0.0`` is IPv4 only.
- An IPv4 client of a dual-stack socket is seen as IPv4 everywhere: its
  address, written IPv4-mapped by the kernel (``::ffff:192.0.2.7``), is
  turned into ``192.0.2.7`` once, when the connection is accepted, and so
  is the peer of every data connection. Access lists, bans, per-address
  limits, ``.xxftp/hosts``, the bounce check of PORT/EPRT and the logs
  never see a mapped address. IPv6 addresses are written in one form
  (compressed, lower case), so the same host compares equal.
- ``EPRT`` (and ``PORT``) naming the unspecified address (``|2|::|p|``,
  ``|1|0.0.0.0|p|``, ``0,0,0,0,p1,p2``) means the control connection's
  address: lftp sends it in active mode when its data socket listens on
  every address. It is answered by connecting to the client's own address,
  in that address's family; any other address must be the client's own
  (the bounce check).
- One client, for the per-address limits and bans (``source_of``), is an
  IPv4 address or an IPv6 /64: the least a single IPv6 host or site is
  given, so rotating addresses within it gains nothing.
- ``PASV`` announces an IPv4 address, so it is refused to a client on
  IPv6, which must use ``EPSV`` (a reply it could not read would send it
  astray); ``EPSV`` works on both.

This module knows nothing of sockets or pyftpdlib: it maps strings.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ALL", "IPV4_ALL", "PASV_ON_IPV6", "eprt_argument", "is_ipv6", "plain", "port_argument", "port_target"]

ALL = "::"  # the default --host: every address, both stacks
IPV4_ALL = "0.0.0.0"  # where ALL listens on a machine without IPv6
PASV_ON_IPV6 = "522 PASV is for IPv4 clients; use EPSV."


def plain(ip: str) -> str:
    """``ip`` as this server writes a client address: an IPv4-mapped
    address as IPv4, an IPv6 one compressed; anything else unchanged."""
    if ":" not in ip:  # IPv4 (or not an address): as it is, without parsing
        return ip
    address, sep, scope = ip.partition("%")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return ip
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed) + sep + scope


def is_ipv6(ip: str) -> bool:
    """True for an IPv6 address that is not an IPv4-mapped one."""
    try:
        return ipaddress.ip_address(plain(ip).partition("%")[0]).version == 6
    except ValueError:
        return False


def port_target(family: str, given: str, control_ip: str) -> tuple[str, str]:
    """(family, address) an EPRT naming ``family`` and ``given`` should
    connect to: the unspecified address means the client's own
    (``control_ip``), in that address's family; an IPv4-mapped one is
    IPv4. Families are EPRT's, ``"1"`` (IPv4) and ``"2"`` (IPv6). Any
    other address comes back as given, for the bounce check to judge."""
    try:
        parsed = ipaddress.ip_address(given)
    except ValueError:
        return family, given
    if parsed.is_unspecified:
        address = plain(control_ip)
    elif parsed.version == 6 and parsed.ipv4_mapped is not None:
        address = str(parsed.ipv4_mapped)
    else:
        return family, plain(given)
    return ("2" if is_ipv6(address) else "1"), address


def eprt_argument(line: str, control_ip: str) -> str:
    """The EPRT argument to act on: ``line`` with its address read by
    ``port_target``; a malformed one unchanged (pyftpdlib answers 501)."""
    fields = line.split(line[0])[1:-1] if line else []
    if len(fields) != 3 or fields[0] not in ("1", "2"):
        return line
    family, address = port_target(fields[0], fields[1], control_ip)
    return f"|{family}|{address}|{fields[2]}|"


def port_argument(line: str, control_ip: str) -> str:
    """The PORT argument to act on: ``0,0,0,0,p1,p2`` names the address of
    an IPv4 client; anything else unchanged."""
    fields = line.replace(" ", "").split(",")
    if fields[:4] != ["0"] * 4 or len(fields) != 6 or is_ipv6(control_ip):
        return line
    return ",".join(plain(control_ip).split(".") + fields[4:])


def source_of(ip: str) -> str:
    """What the per-address limits and bans count as one client: an IPv4
    address (also written IPv4-mapped, ``::ffff:a.b.c.d``), or an IPv6
    /64."""
    if ":" not in ip:  # IPv4 (or not an address): as it is, without parsing
        return ip
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
