"""The SSRF guard: the address table, URL pre-checks, and real connections over loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.egress import DestinationRefused, EgressPolicy, IPAddress, refused_cause
from service.egress_transport import guarded_transport
from service.hosts import embedded_ipv4
from service.loopback import serve
from tests.destinations import ALL, INVALID, ODD_LITERALS

ip = ipaddress.ip_address

# address, allowed by default, with from_setting("loopback"), with "10.0.0.0/8,hooks.internal"
ADDRESS_TABLE = [
    ("127.0.0.1", False, True, False),
    ("127.8.9.10", False, True, False),
    ("::1", False, True, False),
    ("10.1.2.3", False, False, True),
    ("172.16.0.1", False, False, False),
    ("192.168.1.1", False, False, False),
    ("169.254.169.254", False, False, False),
    ("fd00:ec2::254", False, False, False),
    ("fe80::1", False, False, False),
    ("::ffff:127.0.0.1", False, True, False),
    ("::ffff:10.0.0.1", False, False, True),
    ("64:ff9b::a9fe:a9fe", False, False, False),
    ("2002:a9fe:a9fe::1", False, False, False),
    ("100.64.0.1", False, False, False),
    ("0.0.0.0", False, False, False),
    ("::", False, False, False),
    ("224.0.0.1", False, False, False),
    ("ff02::1", False, False, False),
    ("240.0.0.1", False, False, False),
    ("2001:db8::1", False, False, False),
    ("8.8.8.8", True, True, True),
    ("64:ff9b::808:808", True, True, True),
    ("2606:4700::1111", True, True, True),
]


@pytest.mark.parametrize(("address", "default", "loopback", "mixed"), ADDRESS_TABLE,
                         ids=[row[0] for row in ADDRESS_TABLE])
def test_only_public_addresses_are_allowed_unless_listed(address, default, loopback, mixed):
    assert EgressPolicy().address_allowed(ip(address)) is default
    assert EgressPolicy.from_setting("loopback").address_allowed(ip(address)) is loopback
    assert EgressPolicy.from_setting("10.0.0.0/8,hooks.internal").address_allowed(ip(address)) is mixed


def test_setting_parses_shorthands_networks_and_host_names():
    policy = EgressPolicy.from_setting(
        " private, 203.0.113.7 ,2001:db8::/32, Hooks.Internal, *.corp.example,,")
    assert ipaddress.ip_network("192.168.0.0/16") in policy.allowed
    assert ipaddress.ip_network("fc00::/7") in policy.allowed
    assert ipaddress.ip_network("203.0.113.7/32") in policy.allowed
    assert policy.allowed_hosts == ("hooks.internal", "*.corp.example")
    assert EgressPolicy.from_setting(None) == EgressPolicy() == EgressPolicy.from_setting("")


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "300.1.2.3", "hooks_internal", "*", "a b"])
def test_bad_setting_item_is_named_in_the_error(bad):
    with pytest.raises(ValueError, match="FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS") as info:
        EgressPolicy.from_setting(f"loopback,{bad}")
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://hooks.example.com/x", "scheme"),
    ("hooks.example.com/x", "scheme"),
    ("http:///x", "no host"),
    ("https://user:hunter2@hooks.example.com/x", "credentials"),
    ("http://10.0.0.7/x", "private"),
    ("http://[::1]:8000/x", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://127.1/x", "loopback"),
    ("http://0x7f.1/x", "loopback"),
])
def test_submitted_url_is_refused_early(url, reason):
    with pytest.raises(DestinationRefused, match=reason) as info:
        EgressPolicy().check_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", [
    "https://8.8.8.8/hook",
    "https://[2606:4700::1111]/hook",
    "https://hooks.example.com/hook?token=abc",
    "http://localhost:8000/hook",  # names are judged at connect time
])
def test_submitted_url_with_public_literal_or_name_passes(url):
    assert EgressPolicy().check_url(url) is None  # refusing would raise DestinationRefused


def test_allowed_private_literal_passes_the_url_check():
    assert EgressPolicy.from_setting("loopback").check_url("http://127.0.0.1:8000/hook") is None


def test_refused_cause_walks_the_exception_chain():
    refused = DestinationRefused("a.example", ip("10.0.0.1"), "private")
    try:
        try:
            raise refused
        except DestinationRefused as exc:
            raise httpx.ConnectError("x") from exc
    except httpx.ConnectError as outer:
        assert refused_cause(outer) is refused
    assert refused_cause(httpx.ConnectError("no cause")) is None


def test_transport_refuses_proxies_that_would_bypass_the_check():
    with pytest.raises(TypeError, match="proxy"):
        guarded_transport(EgressPolicy(), proxy="http://127.0.0.1:3128")


# --- real connections over loopback ------------------------------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        self.hosts.append(request.headers["host"])
        return PlainTextResponse("ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    recv = Receiver()
    async with serve(recv.app) as url:
        yield recv, httpx.URL(url).port


def resolving_to(*addresses: str):
    """A resolver that answers every name with `addresses`, as a rebinding attacker's DNS would."""
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ip(a) for a in addresses]
    return resolver


async def post(url: str, policy: EgressPolicy, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=guarded_transport(policy, **kwargs),
                                 follow_redirects=False, timeout=5) as client:
        return await client.post(url, content=b"{}")


def assert_refused(info: pytest.ExceptionInfo[httpx.ConnectError], reason: str) -> DestinationRefused:
    refused = refused_cause(info.value)
    assert refused is not None, info.value
    assert refused.reason == reason
    return refused


@pytest.mark.anyio
async def test_loopback_literal_is_refused_by_default_and_never_reached(receiver):
    recv, port = receiver
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://127.0.0.1:{port}/hook", EgressPolicy())
    refused = assert_refused(info, "loopback")
    assert refused.address == ip("127.0.0.1")
    assert recv.hosts == []


@pytest.mark.anyio
async def test_loopback_is_reached_when_the_setting_allows_it(receiver):
    recv, port = receiver
    response = await post(f"http://127.0.0.1:{port}/hook", EgressPolicy.from_setting("loopback"))
    assert response.status_code == 200
    assert recv.hosts == [f"127.0.0.1:{port}"]


@pytest.mark.anyio
async def test_localhost_name_is_refused_by_default(receiver):
    recv, port = receiver
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://localhost:{port}/hook", EgressPolicy())
    assert_refused(info, "loopback")
    assert recv.hosts == []


@pytest.mark.anyio
async def test_legacy_numeric_host_is_refused_at_connect(receiver):
    recv, port = receiver
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://0x7f.1:{port}/hook", EgressPolicy())
    assert_refused(info, "loopback")
    assert recv.hosts == []


@pytest.mark.anyio
async def test_public_name_rebound_to_loopback_is_refused(receiver):
    recv, port = receiver
    url = f"http://hooks.example.com:{port}/hook"
    EgressPolicy().check_url(url)  # passes the submit-time check...
    with pytest.raises(httpx.ConnectError) as info:  # ...but not the connect
        await post(url, EgressPolicy(), resolver=resolving_to("127.0.0.1"))
    refused = assert_refused(info, "loopback")
    assert (refused.host, refused.address) == ("hooks.example.com", ip("127.0.0.1"))
    assert recv.hosts == []


@pytest.mark.anyio
async def test_connection_dials_the_ip_but_keeps_the_host_name(receiver):
    recv, port = receiver
    response = await post(f"http://hooks.example.com:{port}/hook", EgressPolicy.from_setting("loopback"),
                          resolver=resolving_to("127.0.0.1"))
    assert response.status_code == 200
    assert recv.hosts == [f"hooks.example.com:{port}"]


@pytest.mark.anyio
async def test_refused_addresses_of_a_name_are_never_dialled(receiver):
    recv, port = receiver
    # 127.0.0.1 would answer, but only 127.0.0.2 (where nothing listens) is allowed.
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://hooks.example.com:{port}/hook", EgressPolicy.from_setting("127.0.0.2"),
                   resolver=resolving_to("127.0.0.1", "127.0.0.2"))
    assert refused_cause(info.value) is None
    assert recv.hosts == []


@pytest.mark.anyio
async def test_next_allowed_address_is_tried_when_one_fails(receiver):
    recv, port = receiver
    response = await post(f"http://hooks.example.com:{port}/hook", EgressPolicy.from_setting("loopback"),
                          resolver=resolving_to("10.0.0.1", "127.0.0.2", "127.0.0.1"))
    assert response.status_code == 200
    assert len(recv.hosts) == 1


@pytest.mark.anyio
async def test_allowed_host_name_may_resolve_anywhere(receiver):
    recv, port = receiver
    policy = EgressPolicy.from_setting("*.internal.example")
    response = await post(f"http://hooks.internal.example:{port}/hook", policy,
                          resolver=resolving_to("127.0.0.1"))
    assert response.status_code == 200
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://internal.example:{port}/hook", policy, resolver=resolving_to("127.0.0.1"))
    assert_refused(info, "loopback")
    assert len(recv.hosts) == 1


@pytest.mark.anyio
async def test_unresolvable_name_is_a_plain_connect_error():
    async def fails(host: str, port: int) -> list[IPAddress]:
        raise OSError("no such name")

    with pytest.raises(httpx.ConnectError) as info:
        await post("http://nowhere.example/hook", EgressPolicy(), resolver=fails)
    assert refused_cause(info.value) is None


# --- odd spellings: refused when a URL is accepted and again when connecting --------------------

HTTPX_CANNOT_PARSE = {"octal"}  # httpx refuses 0177.0.0.1 outright, so no request can carry it


@pytest.mark.parametrize(("host", "reason"), list(ALL.values()), ids=list(ALL))
def test_oddly_spelled_or_invalid_destination_is_refused_when_the_url_is_checked(host, reason):
    with pytest.raises(DestinationRefused) as info:
        EgressPolicy().check_url(f"http://{host}/hook")
    if host == ODD_LITERALS["octal"][0]:
        reason = "not a valid URL"
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(("host", "reason"), list(ODD_LITERALS.values()), ids=list(ODD_LITERALS))
def test_oddly_spelled_private_literal_is_judged_as_the_address_it_is(host, reason):
    with pytest.raises(DestinationRefused) as info:
        EgressPolicy().check_url(f"http://{host}/hook")
    if host != ODD_LITERALS["octal"][0]:
        assert info.value.address is not None
        assert embedded_ipv4(info.value.address) or info.value.address in (
            ip("127.0.0.1"), ip("169.254.169.254"))


@pytest.mark.parametrize("host", ["127.0.0.1.", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"])
def test_allowed_private_literal_passes_however_it_is_spelled(host):
    assert EgressPolicy.from_setting("loopback").check_url(f"http://{host}:8000/hook") is None


def no_dns(calls: list[str]):
    """A resolver that records being asked and fails: a literal must never reach DNS."""
    async def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        raise OSError("no DNS in this test")
    return resolver


@pytest.mark.anyio
@pytest.mark.parametrize(("host", "reason"), list(ODD_LITERALS.values()), ids=list(ODD_LITERALS))
async def test_oddly_spelled_private_literal_is_refused_at_connect(receiver, host, reason):
    recv, port = receiver
    url = f"http://{host}:{port}/hook"
    if host in {ODD_LITERALS[k][0] for k in HTTPX_CANNOT_PARSE}:
        with pytest.raises(httpx.InvalidURL):
            await post(url, EgressPolicy())
        return
    asked: list[str] = []
    with pytest.raises(httpx.ConnectError) as info:
        await post(url, EgressPolicy(), resolver=no_dns(asked))
    refused = refused_cause(info.value)
    assert refused is not None, info.value
    assert refused.reason.startswith(reason)
    assert asked == []  # judged as the literal it is, not looked up as a name
    assert recv.hosts == []


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1.", "2130706433", "0x7f000001."])
async def test_oddly_spelled_loopback_is_dialled_as_loopback_when_allowed(receiver, host):
    recv, port = receiver
    response = await post(f"http://{host}:{port}/hook", EgressPolicy.from_setting("loopback"),
                          resolver=no_dns([]))
    assert response.status_code == 200
    assert len(recv.hosts) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("port", [65536, 99999])  # port 0 reaches no connection: httpcore dials 80
async def test_invalid_port_is_refused_at_connect_even_to_an_allowed_address(receiver, port):
    recv, _ = receiver
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://127.0.0.1:{port}/hook", EgressPolicy.from_setting("loopback"))
    assert_refused(info, "port must be between 1 and 65535")
    assert recv.hosts == []


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["label-64", "name-254"])
async def test_invalid_host_name_is_refused_at_connect_before_any_lookup(receiver, key):
    recv, port = receiver
    host, reason = INVALID[key]
    # Were the name looked up, it would resolve to the receiver, which this policy allows.
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://{host}:{port}/hook", EgressPolicy.from_setting("loopback"),
                   resolver=resolving_to("127.0.0.1"))
    assert_refused(info, reason)
    assert recv.hosts == []


@pytest.mark.anyio
@pytest.mark.parametrize(("address", "reason"), [
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:7f00:1", "loopback"), ("::127.0.0.1", "loopback"),
    ("169.254.169.254", "cloud metadata"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
])
async def test_a_name_resolving_to_a_wrapped_private_address_is_refused(receiver, address, reason):
    recv, port = receiver
    with pytest.raises(httpx.ConnectError) as info:
        await post(f"http://hooks.example.com.:{port}/hook", EgressPolicy(), resolver=resolving_to(address))
    refused = refused_cause(info.value)
    assert refused is not None and refused.reason.startswith(reason)
    assert recv.hosts == []
