"""Where a callback may go: the webhook policy over common.netvet, and the failure categories.

A callback URL must be http(s) without credentials (common.netvet.split_url). Its host is
resolved once; unless the host is on `webhooks.allow_hosts`, every address must be public, and
the POST then goes to the vetted address (control.webhooks.post), so neither a private address
nor a DNS answer that changes after the check is ever connected to.

What the submitter sees of a failure is its category alone: `refused` (not allowed, nothing was
sent), `unreachable` (DNS, connect or TLS failed), `timeout`, `bad response` (not HTTP), or
`http <status>`. The address, port and error text go to the operator's log only, so a callback
cannot be used to map the control plane's network.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from common.netvet import Refused, Unresolvable, split_url, vet_address

REFUSED = "refused"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
BAD_RESPONSE = "bad response"
_SCHEMES = ("http", "https")


class DeliveryFailed(Exception):
    """An attempt that failed: `category` is all the submitter sees; the message is for logs."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category


@dataclass(frozen=True, slots=True)
class Target:
    """A vetted destination: connect to `address`, speak to `host`."""

    address: str
    port: int
    host: str
    path: str
    tls: bool

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        default = 443 if self.tls else 80
        return name if self.port == default else f"{name}:{self.port}"

    def __str__(self) -> str:
        return f"{self.host} ({self.address} port {self.port})"


async def vet_target(url: str, allow_hosts: Collection[str]) -> Target:
    """The address `url` may be posted to; DeliveryFailed(`refused` or `unreachable`) if none."""
    try:
        parts = split_url(url, _SCHEMES)
        host = (parts.hostname or "").lower()
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        allowed = host in {h.lower() for h in allow_hosts}
        address = await vet_address(host, port, allow_private=allowed)
    except Refused as exc:
        raise DeliveryFailed(REFUSED, f"callback {url[:200]!r}: {exc}") from exc
    except Unresolvable as exc:
        raise DeliveryFailed(UNREACHABLE, f"callback {url[:200]!r}: {exc}") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(address=address, port=port, host=host, path=path, tls=tls)
