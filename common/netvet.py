"""Vet an outgoing http(s) URL before any connection: its shape, then every address it resolves to.

No policy here: callers (the daemon's http inputs, the control plane's webhooks) decide which
hosts are allowed and whether a host may reach private addresses. What is shared is the part
that is easy to get subtly wrong:

- `split_url`: scheme on the caller's list, a host, no credentials, a valid port, ASCII with no
  whitespace or control characters (nothing that could split a request line or a header).
- `vet_address`: resolve the host once; every address must be public unless private ones are
  allowed; return the address to connect to. Connecting to that address (not the name) means a
  DNS answer that changes between the check and the connect (rebinding) cannot redirect it.

Errors: `Refused` (the URL or an address is not allowed: permanent) and `Unresolvable` (an
OSError: the name did not resolve, maybe transiently). Their text is for operators' logs: it may
name the address, so never hand it to whoever supplied the URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 prefixes: a translator reaches the embedded IPv4 address from its own network, which
# may be a private one; refused whatever they embed (Python's is_reserved differs by version).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class Refused(Exception):
    """The URL, or an address its host resolves to, is not allowed."""


class Unresolvable(OSError):
    """The host name did not resolve (to any address)."""


def split_url(url: str, schemes: Collection[str]) -> SplitResult:
    """`url` split, or Refused when its shape is not one we would ever send a request to."""
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise Refused("URL must be ASCII without whitespace (percent-encode the rest)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # say, an unclosed IPv6 bracket
        raise Refused(f"malformed URL {url[:200]!r}") from exc
    if parts.scheme.lower() not in schemes:
        raise Refused(f"scheme {parts.scheme[:20]!r} refused (only {', '.join(sorted(schemes))})")
    if parts.username is not None or parts.password is not None:
        raise Refused("URLs must not carry credentials")
    if not parts.hostname:
        raise Refused("URL has no host")
    try:
        port = parts.port  # a port out of range raises ValueError here
    except ValueError as exc:
        raise Refused(f"bad port in {url[:200]!r}") from exc
    if port == 0:
        raise Refused(f"bad port in {url[:200]!r}")
    return parts


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address, judging embedded IPv4 addresses too."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_public(ip.ipv4_mapped)  # the socket connects to the IPv4 address itself
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return False  # is_global alone passes multicast (224.0.0.1) on Python 3.11
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NAT64):
            return False
        return all(v4 is None or is_public(v4) for v4 in (ip.sixtofour, *(ip.teredo or ())))
    return True


async def vet_address(host: str, port: int, *, allow_private: bool) -> str:
    """The one address to connect to for `host`; Refused if any address is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise Unresolvable(f"{host} resolved to no address")
    if not allow_private:
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not is_public(ip):
                raise Refused(f"{host} resolves to non-public address {ip}: refused")
    return addresses[0]
