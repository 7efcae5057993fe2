"""Key and tenant commands: `keys create|list|rotate|revoke|bootstrap`, `tenants create|list`.

All but `keys bootstrap` go through the API and need an operator key (`--api-key`, or
FLOTILLA_API_KEY); bootstrap makes the first one straight in Postgres (bootstrap.py).
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import msgspec

from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags
from control.cli.format import ago, print_created, print_json, table, when
from control.errors import BadInput
from schemas import api

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str, flag: str) -> float:
    """`90s`, `30m`, `1h`, `30d` or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise BadInput(f"{flag} {text!r}: write a duration like 90s, 30m, 1h or 30d")
    return float(match[1]) * _UNIT_S[match[2]]


def register(sub: Any) -> None:
    """Add `keys` and `tenants` to the `flotilla` parser (`sub` is its subparsers action)."""
    from control.cli.bootstrap import add_bootstrap

    p = sub.add_parser("keys", help="API keys: create, list, rotate, revoke (operator key)")
    ksub = p.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    c = ksub.add_parser("create", help="a new key, shown once")
    c.add_argument("--tenant", required=True, help="the tenant the key acts for")
    c.add_argument("--operator", action="store_true", help="a fleet-wide operator key")
    c.add_argument("--name", default="", help="what the key is for (shown by `keys list`)")
    c.add_argument("--expires-in", metavar="D", help="e.g. 30d, 12h (default: never)")
    add_client_flags(c)
    c.set_defaults(handler=create_key)
    ls = ksub.add_parser("list", help="keys (never the keys themselves)")
    ls.add_argument("--tenant")
    add_client_flags(ls)
    ls.set_defaults(handler=list_keys)
    r = ksub.add_parser("rotate", help="a new key; the old one ends after the grace")
    r.add_argument("key_id", metavar="KEY_ID")
    r.add_argument(
        "--grace", default="1h", metavar="D",
        help="how long the old key still works (default 1h; 0: not at all)",
    )  # fmt: skip
    r.add_argument("--expires-in", metavar="D", help="new key's lifetime (default: the old one's)")
    add_client_flags(r)
    r.set_defaults(handler=rotate_key)
    v = ksub.add_parser("revoke", help="refuse a key from now on")
    v.add_argument("key_id", metavar="KEY_ID")
    add_client_flags(v)
    v.set_defaults(handler=revoke_key)
    add_bootstrap(ksub)

    p = sub.add_parser("tenants", help="tenants: create, list (operator key)")
    tsub = p.add_subparsers(dest="tenants_cmd", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="a new tenant; its webhook secret is shown once")
    t.add_argument("tenant", metavar="TENANT")
    t.add_argument("--max-queued", type=int, default=10_000, help="jobs waiting at most")
    t.add_argument("--submit-rate", type=float, default=50.0, help="submits per second")
    t.add_argument("--submit-burst", type=int, default=100, help="submits at once")
    add_client_flags(t)
    t.set_defaults(handler=create_tenant)
    tl = tsub.add_parser("list", help="tenants, their limits and active keys")
    add_client_flags(tl)
    tl.set_defaults(handler=list_tenants)


def _expires_in(args: argparse.Namespace) -> float | None:
    return None if args.expires_in is None else duration_s(args.expires_in, "--expires-in")


async def _issue(args: argparse.Namespace, verb: str, req: msgspec.Struct) -> int:
    """Ask for a new key and print it: the only time it is ever shown."""
    async with ApiClient.from_args(args) as c:
        created = await c.call(verb, req, api.KeyCreated)
    print_created(created, args.json)
    return 0


async def create_key(args: argparse.Namespace) -> int:
    req = api.KeyCreateRequest(
        tenant=args.tenant, role="operator" if args.operator else "tenant", name=args.name,
        expires_in_s=_expires_in(args),
    )  # fmt: skip
    return await _issue(args, "key.create", req)


async def list_keys(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as c:
        reply = await c.call("key.list", api.KeyListRequest(tenant=args.tenant), api.KeyListReply)
    if args.json:
        print_json(reply)
        return 0
    now = time.time()
    rows = [
        (k.key_id, k.tenant, k.role, k.name or None, k.state, ago(k.created_at, now),
         when(k.expires_at), ago(k.last_used_at, now) if k.last_used_at else None,
         k.rotated_from)
        for k in reply.keys
    ]  # fmt: skip
    headers = ["key id", "tenant", "role", "name", "state", "created", "expires", "last used"]
    print(table([*headers, "rotated from"], rows))
    return 0


async def rotate_key(args: argparse.Namespace) -> int:
    req = api.KeyRotateRequest(
        key_id=args.key_id, grace_s=duration_s(args.grace, "--grace"),
        expires_in_s=_expires_in(args),
    )  # fmt: skip
    return await _issue(args, "key.rotate", req)


async def revoke_key(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as c:
        ack = await c.call("key.revoke", api.KeyRef(key_id=args.key_id), api.AckReply)
    if args.json:
        print_json(ack)
    else:
        print(ack.message)
    return 0


async def create_tenant(args: argparse.Namespace) -> int:
    req = api.TenantCreateRequest(
        tenant=args.tenant, max_queued=args.max_queued, submit_rate=args.submit_rate,
        submit_burst=args.submit_burst,
    )  # fmt: skip
    async with ApiClient.from_args(args) as c:
        created = await c.call("tenant.create", req, api.TenantCreated)
    if args.json:
        print_json(created)
    else:
        print(f"created tenant {created.info.tenant}; webhook signing secret (shown once):")
        print(created.webhook_secret, flush=True)
    return 0


async def list_tenants(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as c:
        reply = await c.call("tenant.list", api.EmptyRequest(), api.TenantListReply)
    if args.json:
        print_json(reply)
        return 0
    rows = [
        (t.tenant, t.max_queued, f"{t.submit_rate:g}/s", t.submit_burst, t.active_keys,
         when(t.created_at))
        for t in reply.tenants
    ]  # fmt: skip
    print(table(["tenant", "max queued", "rate", "burst", "keys", "created"], rows))
    return 0
