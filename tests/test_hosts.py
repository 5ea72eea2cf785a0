"""One canonical form for every spelling of a host: what the SSRF check and the guard both judge."""

from __future__ import annotations

import ipaddress

import pytest

from service.hosts import Host, InvalidHost, canonical_host, check_port, embedded_ipv4
from tests.destinations import LONG_LABEL, LONG_NAME

ip = ipaddress.ip_address

SAME_HOST = [  # (as written, canonical name, address or None)
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1", "127.0.0.1"),
    ("169.254.169.254.", "169.254.169.254", "169.254.169.254"),
    ("2130706433", "127.0.0.1", "127.0.0.1"),
    ("2130706433.", "127.0.0.1", "127.0.0.1"),
    ("0x7f000001.", "127.0.0.1", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1", "127.0.0.1"),
    ("169.16689662", "169.254.169.254", "169.254.169.254"),
    ("%31%32%37.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("%31%32%37.0.0.1.", "127.0.0.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "::ffff:7f00:1"),
    ("::FFFF:7F00:1", "::ffff:7f00:1", "::ffff:7f00:1"),
    ("Hooks.Example.COM.", "hooks.example.com", None),
    ("hooks%2Eexample.com", "hooks.example.com", None),
    ("bücher.example", "xn--bcher-kva.example", None),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
    ("1e3.example", "1e3.example", None),
    ("a" * 63 + ".example", "a" * 63 + ".example", None),
]


@pytest.mark.parametrize(("written", "name", "address"), SAME_HOST, ids=[row[0][:24] for row in SAME_HOST])
def test_every_spelling_of_a_host_has_one_canonical_form(written, name, address):
    assert canonical_host(written) == Host(name, ip(address) if address else None)


INVALID = [  # (as written, reason)
    ("", "URL has no host"),
    (".", "URL has no host"),
    ("127.0.0.1..", "empty label"),
    ("a..example", "empty label"),
    ("256.0.0.1", "not a valid IPv4 address"),
    ("1.2.3.4.5", "not a valid IPv4 address"),
    ("4294967296", "not a valid IPv4 address"),
    ("08.0.0.1", "not a valid IPv4 address"),
    ("hooks.example.123", "not a valid IPv4 address"),  # a top-level domain is never a number
    ("127.0.0.1%2f", "characters other than"),
    ("%00.example", "characters other than"),
    ("hooks%252Eexample.com", "percent-encoded more than once"),
    ("%ff.example", "not UTF-8"),
    ("hooks_internal.example", "characters other than"),
    ("-hooks.example", "characters other than"),
    ("[fe80::1%25eth0]", "zone identifiers"),
    ("[::1::2]", "not a valid IPv6 address"),
    (LONG_LABEL, "label is longer than 63"),
    (LONG_NAME, "longer than 253"),
]


@pytest.mark.parametrize(("written", "reason"), INVALID, ids=[row[0][:24] or "empty" for row in INVALID])
def test_hosts_nothing_should_be_sent_to_are_refused_with_a_reason(written, reason):
    with pytest.raises(InvalidHost, match=reason):
        canonical_host(written)


@pytest.mark.parametrize("port", [0, 65536, 99999, -1])
def test_ports_outside_1_to_65535_are_refused(port):
    with pytest.raises(InvalidHost, match="between 1 and 65535"):
        check_port(port)


@pytest.mark.parametrize("port", [None, 1, 443, 65535])
def test_real_ports_and_no_port_pass(port):
    assert check_port(port) is None  # refusing would raise InvalidHost


@pytest.mark.parametrize(("v6", "v4"), [
    ("::ffff:127.0.0.1", "127.0.0.1"),  # mapped
    ("::127.0.0.1", "127.0.0.1"),  # compatible (deprecated)
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
    ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4
    ("::1", None),
    ("::", None),
    ("2606:4700::1111", None),
])
def test_ipv6_addresses_that_carry_an_ipv4_address_are_unwrapped(v6, v4):
    assert embedded_ipv4(ip(v6)) == (ip(v4) if v4 else None)
