"""`flotilla chaos [--profile short|medium|full] [--seed N] [--json] [--keep DIR]`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from control.devstack.chaos.profiles import PROFILES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chaos", help="run the fault matrix against a dev fleet and print figures")
    p.add_argument("--profile", choices=sorted(PROFILES), default="short")
    p.add_argument("--seed", type=int, default=1, help="seed of the random choices (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument(
        "--keep", type=Path, help="run in this directory and keep it (logs, data) afterwards"
    )
    p.set_defaults(handler=chaos)


async def chaos(args: argparse.Namespace) -> int:
    from control.devstack import require_embedded

    require_embedded()
    # Imported here: every other command builds the same parser and needs none of this.
    from control.devstack.chaos.runner import run
    from control.devstack.chaos.table import as_json, render

    profile = PROFILES[args.profile]

    def progress(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.keep is not None:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="flotilla-chaos-"))
    work.chmod(0o755)  # PostgreSQL runs as another user under root and must enter it
    try:
        report = await run(profile, args.seed, work, progress)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(render(report))
    return 0 if report.ok() else 1
