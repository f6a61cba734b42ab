"""Which IP addresses a callback may be sent to: public unicast only, by our own deny list.

`ipaddress.is_global` is not enough on Python 3.11 (it calls 100.64/10's neighbours and several
IPv6 transition ranges global, and knows nothing of cloud metadata addresses), so the ranges
are spelled out here, each with its reason. IPv6 is allowed only inside 2000::/3, the global
unicast block; every IPv6 form that carries an IPv4 address inside it (mapped, compatible,
translated, NAT64, 6to4, Teredo) is refused outright, whatever the IPv4 address is.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified / this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT (100.100.100.200 is Alibaba's metadata service)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (169.254.169.254 is the cloud metadata service)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments (192.0.0.192 is Oracle's metadata service)"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112 direct delegation"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("168.63.129.16/32", "Azure's host services (metadata)"),
)

_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_DENIED: tuple[tuple[str, str], ...] = (
    ("2001::/23", "IETF protocol assignments (Teredo 2001::/32, benchmarking, ORCHID)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (embeds an IPv4 address)"),
    ("2620:4f:8000::/48", "AS112"),
    ("3fff::/20", "documentation"),
)

_V4 = tuple((ipaddress.IPv4Network(net), why) for net, why in _V4_DENIED)
_V6 = tuple((ipaddress.IPv6Network(net), why) for net, why in _V6_DENIED)


def refusal(address: IPAddress) -> str | None:
    """Why a callback must not go to `address`, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "an IPv6 address with a zone"
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if address not in _V6_GLOBAL_UNICAST:
            # ::/8 (unspecified, loopback, IPv4-compatible, IPv4-translated), 64:ff9b::/96 and
            # 64:ff9b:1::/48 (NAT64), 100::/64 (discard), 5f00::/16 (SRv6), fc00::/7 (unique
            # local, fd00:ec2::254 is AWS's metadata service), fe80::/10, fec0::/10, ff00::/8.
            return "not a global unicast IPv6 address"
        return next((why for net6, why in _V6 if address in net6), None)
    return next((why for net4, why in _V4 if address in net4), None)


def is_allowed(address: IPAddress) -> bool:
    return refusal(address) is None
