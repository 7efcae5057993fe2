"""`flotilla windows NODE [--set RULE ... | --clear | --from-config]`: a node's processing windows.

Without an option it shows the rules in force on the node (from its heartbeat) and the
priorities each pool pulls now. `--set` replaces them (one `--set` per rule), `--clear` removes
every window (work of every class is pulled at any time), `--from-config` puts back the node's
config file's `[[windows]]`. Rules set here are kept by the node across restarts and reloads.

A RULE is `key=value` pairs separated by spaces or `;`, lists comma-separated:
`pools=cpu priorities=low start=22:00 end=06:00 tz=Europe/Paris days=mon,tue`.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import msgspec

from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags, add_json_flag
from control.cli.format import print_json, table
from control.cli.nodes import _known
from control.errors import CliError
from schemas import api
from schemas.windows import WindowRule

KEYS = ("pools", "priorities", "start", "end", "tz", "days")
LISTS = ("pools", "priorities", "days")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "windows", help="show or set when a node pulls each class of work (processing windows)"
    )
    p.add_argument("node_id", metavar="NODE")
    add_client_flags(p, json_flag=False)
    add_json_flag(p, 'one JSON document: {"node_id", "windows", "source", "open_tiers"}')
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--set", action="append", metavar="RULE", dest="rules",
        help="a rule, e.g. 'pools=cpu priorities=low start=22:00 end=06:00 tz=Europe/Paris "
        "days=mon,tue' (repeat for several; replaces the rules in force)",
    )  # fmt: skip
    how.add_argument("--clear", action="store_true", help="no windows: pull every class any time")
    how.add_argument(
        "--from-config", action="store_true", help="back to the node's config file's windows"
    )
    p.set_defaults(handler=windows)


def parse_rule(text: str) -> WindowRule:
    """One RULE (see the module's docstring); ValueError names what is allowed."""
    fields: dict[str, Any] = {}
    for part in re.split(r"[;\s]+", text.strip()):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"bad rule part {part!r} in {text!r}: use key=value, keys {KEYS}")
        fields[key] = [v for v in value.split(",") if v] if key in LISTS else value
    try:
        return msgspec.convert(fields, WindowRule)
    except msgspec.ValidationError as exc:
        raise ValueError(f"rule {text!r}: {exc}") from None


async def windows(args: argparse.Namespace) -> int:
    if not (args.rules or args.clear or args.from_config):
        return await _show(args)
    rules: list[WindowRule] | None = None if args.from_config else []
    if args.rules:
        rules = [parse_rule(r) for r in args.rules]
    request = api.NodeWindowsRequest(node_id=args.node_id, windows=rules)
    async with ApiClient.from_args(args) as c:
        await _known(c, args.node_id)
        ack = await c.call("node.windows", request, api.AckReply)
    if not ack.ok:
        raise CliError(f"{args.node_id} refused windows: {ack.message or 'no reason given'}")
    if args.json:
        print_json({"node_id": args.node_id, "ok": ack.ok, "message": ack.message})
    else:
        print(f"{args.node_id}: {ack.message}", flush=True)
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as c:
        node = await _known(c, args.node_id)
    hb = node.heartbeat
    rules = list(hb.windows) if hb else []
    source = hb.windows_source if hb else "config"
    tiers = dict(hb.open_tiers) if hb else {}
    if args.json:
        print_json(
            {"node_id": args.node_id, "windows": rules, "source": source, "open_tiers": tiers}
        )
        return 0
    if not rules:
        print(f"{args.node_id}: no windows ({source}): every class is pulled at any time")
    else:
        print(f"{args.node_id}: {len(rules)} window rule(s), from {source}")
        rows = [
            [",".join(r.pools) or "all", ",".join(r.priorities) or "all",
             f"{r.start}-{r.end}", r.tz, ",".join(r.days) or "every day"]
            for r in rules
        ]  # fmt: skip
        print(table(("pools", "priorities", "time", "tz", "days"), rows))
    for pool, open_now in sorted(tiers.items()):
        print(f"{pool}: pulling {', '.join(open_now) or 'nothing'} now")
    return 0
