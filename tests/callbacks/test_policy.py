"""The callback address policy: every form attackers use to reach an internal address is refused.

Resolution is injected (TableResolver), so all of this runs offline and deterministically.
"""

from __future__ import annotations

import ipaddress

import pytest

from darkroom.callbacks.addresses import is_allowed
from darkroom.callbacks.policy import (
    CallbackRefused,
    HostUnresolved,
    check_at_submit,
    parse,
    resolve_allowed,
)
from darkroom.errors import InvalidRequest
from darkroom.testing import TableResolver

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

RESOLVER = TableResolver(
    {
        "hooks.example.com": [[PUBLIC_V4, PUBLIC_V6]],
        "mixed.example.com": [[PUBLIC_V4, "10.0.0.7"]],
        "v6-loopback.example.com": [["::1"]],
        "metadata.example.com": [["169.254.169.254"]],
        "mapped.example.com": [["::ffff:127.0.0.1"]],
    }
)

REFUSED = [
    # loopback and private, plainly
    "https://127.0.0.1/hook",
    "https://127.0.0.2:8443/hook",
    "https://10.0.0.1/hook",
    "https://172.16.5.4/hook",
    "https://192.168.1.1/hook",
    "https://0.0.0.0/hook",
    # IPv4 spelled the ways HTTP clients and resolvers accept
    "https://2130706433/hook",
    "https://0x7f000001/hook",
    "https://0x7f.1/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://127.0.1/hook",
    "https://017700000001/hook",
    "https://127.0.0.1./hook",
    # full-width and ideographic dots, full-width digits
    "https://127\uff0e0\uff0e0\uff0e1/hook",
    "https://127\u30020\u30020\u30021/hook",
    "https://\uff11\uff12\uff17.0.0.1/hook",
    # special-purpose IPv4
    "https://100.64.0.1/hook",
    "https://100.100.100.200/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://192.0.0.192/hook",
    "https://168.63.129.16/hook",
    "https://198.18.0.1/hook",
    "https://192.0.2.10/hook",
    "https://224.0.0.1/hook",
    "https://240.0.0.1/hook",
    "https://255.255.255.255/hook",
    # IPv6 literals
    "https://[::1]/hook",
    "https://[::]/hook",
    "https://[fe80::1%25eth0]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[fd00:ec2::254]/hook",
    "https://[ff02::1]/hook",
    "https://[2001:db8::1]/hook",
    # IPv6 forms that embed IPv4
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:93.184.215.14]/hook",
    "https://[::127.0.0.1]/hook",
    "https://[::ffff:0:127.0.0.1]/hook",
    "https://[64:ff9b::127.0.0.1]/hook",
    "https://[64:ff9b:1::a00:1]/hook",
    "https://[2002:7f00:1::1]/hook",
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
    # names for internal hosts
    "https://localhost/hook",
    "https://LOCALHOST./hook",
    "https://api.localhost/hook",
    "https://printer.local/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://intranet/hook",
    # userinfo and backslash tricks
    "https://hooks.example.com@127.0.0.1/hook",
    "https://user:pass@hooks.example.com/hook",
    "https://127.0.0.1\\@hooks.example.com/hook",
    "https://hooks.example.com\\@127.0.0.1/hook",
    "https://hooks.example.com\\.127.0.0.1/hook",
    # schemes other than https
    "http://hooks.example.com/hook",
    "ftp://hooks.example.com/hook",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "javascript:alert(1)",
    "//hooks.example.com/hook",
    # malformed
    "https:///hook",
    "https://hooks.example.com:0/hook",
    "https://hooks.example.com:99999/hook",
    "https://hooks.example.com/ho ok",
    "https://hooks.example.com/\x00",
    "https://[::1/hook",
    "https://hooks.example.com/" + "a" * (2049 - len("https://hooks.example.com/")),
    # names whose DNS answers are not all public
    "https://mixed.example.com/hook",
    "https://v6-loopback.example.com/hook",
    "https://metadata.example.com/hook",
    "https://mapped.example.com/hook",
]

ACCEPTED = [
    "https://hooks.example.com/hook",
    "https://hooks.example.com:8443/a/b?c=d&e=f",
    f"https://{PUBLIC_V4}/hook",
    f"https://[{PUBLIC_V6}]/hook",
    "https://HOOKS.example.com./hook",
    "https://unresolvable.example.com/hook",  # DNS down now: the sender checks again
    "https://hooks.example.com/" + "a" * (2048 - len("https://hooks.example.com/")),
]


@pytest.mark.parametrize("url", REFUSED)
async def test_refused_at_submit(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_at_submit(url, RESOLVER)
    assert caught.value.param == "callback_url"
    assert caught.value.message.startswith("callback_url ")


@pytest.mark.parametrize("url", ACCEPTED)
async def test_accepted_at_submit(url: str) -> None:
    await check_at_submit(url, RESOLVER)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", PUBLIC_V4, PUBLIC_V6, "2a00:1450:4001:80b::200e", "100.63.255.255"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["100.64.0.0", "100.127.255.255", "192.88.99.1", "::ffff:8.8.8.8", "::8.8.8.8", "2002:808:808::1",
     "64:ff9b::808:808", "2001::1", "5f00::1", "100::1", "fec0::1", "3fff::1"],
)  # fmt: skip
def test_embedded_and_special_addresses_are_refused(address: str) -> None:
    """Embedding a *public* IPv4 address does not make an IPv6 transition form acceptable."""
    assert not is_allowed(ipaddress.ip_address(address))


async def test_rebinding_is_caught_at_send_time() -> None:
    """Public when the task is submitted, private when the callback is sent: refused then."""
    resolver = TableResolver({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
    url = "https://rebind.example.com/hook"
    await check_at_submit(url, resolver)
    with pytest.raises(CallbackRefused, match="internal address"):
        await resolve_allowed(parse(url), resolver)
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]


async def test_unresolvable_host_is_no_target() -> None:
    with pytest.raises(HostUnresolved):
        await resolve_allowed(parse("https://nowhere.example.com/"), TableResolver({}))


def test_parse_normalises_what_it_sends() -> None:
    target = parse("https://B\u00fccher.example.com:8443/p?q=1#frag")
    assert target.host == "xn--bcher-kva.example.com"
    assert target.url == "https://xn--bcher-kva.example.com:8443/p?q=1"
    assert parse("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/").url == (
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/"
    )


async def test_development_setting_allows_http_and_private() -> None:
    resolver = TableResolver({"localhost": [["127.0.0.1"]]})
    for url in ("http://127.0.0.1:8080/hook", "https://localhost:8443/hook"):
        with pytest.raises(InvalidRequest):
            await check_at_submit(url, resolver)
        await check_at_submit(url, resolver, allow_private=True)
    # Still no malformed URLs, even in development.
    with pytest.raises(InvalidRequest):
        await check_at_submit("https://0x7f.1/hook", resolver, allow_private=True)
