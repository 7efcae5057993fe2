"""`flotilla sim [--scenario small|fleet|FILE] [--nodes N] [--slots S] [--rate R] [--json]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim", help="simulate a fleet (daemon code, stand-in ffmpeg) on a real stack; print figures"
    )
    p.add_argument(
        "--scenario", default="small", help="small, fleet, or a TOML/JSON file (default small)"
    )
    p.add_argument("--nodes", type=int, help="nodes (overrides the scenario)")
    p.add_argument("--slots", type=int, help="cpu slots per node (overrides the scenario)")
    p.add_argument("--rate", type=float, help="jobs submitted per second (overrides)")
    p.add_argument("--duration", type=float, help="seconds of submitting (overrides)")
    p.add_argument("--seed-jobs", type=int, help="finished job rows to pre-fill (overrides)")
    p.add_argument("--processes", type=int, help="simulator processes (overrides)")
    p.add_argument("--nats-servers", type=int, help="1, or 3 for a NATS cluster (overrides)")
    p.add_argument(
        "--nodes-nice",
        type=int,
        choices=range(20),
        metavar="0-19",
        help="niceness of the simulated nodes: they yield the CPU to the stack (overrides)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument(
        "--keep", type=Path, help="run in this directory and keep it (logs, data, seeded rows)"
    )
    p.set_defaults(handler=sim)


def scenario_from(args: argparse.Namespace) -> object:
    import msgspec

    from control.sim.scenario import BUILTIN, load

    s = BUILTIN.get(args.scenario) or load(Path(args.scenario))
    changes = {
        "nodes": args.nodes, "rate": args.rate, "duration_s": args.duration,
        "seed_jobs": args.seed_jobs, "processes": args.processes,
        "nats_servers": args.nats_servers, "nodes_nice": args.nodes_nice,
    }  # fmt: skip
    s = msgspec.structs.replace(s, **{k: v for k, v in changes.items() if v is not None})
    if args.slots is not None:
        s = msgspec.structs.replace(s, slots={"cpu": args.slots})
    return s


async def sim(args: argparse.Namespace) -> int:
    from control.devstack import require_embedded

    require_embedded()
    # Imported here: every other command builds the same parser and needs none of this.
    from control.sim.report import as_json, render
    from control.sim.runner import run
    from control.sim.scenario import Scenario

    s = scenario_from(args)
    assert isinstance(s, Scenario)

    def progress(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.keep is not None:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="flotilla-sim-"))
    work.chmod(0o755)  # PostgreSQL runs as another user under root and must enter it
    # SIGTERM/SIGINT end the run through its `finally`, which stops what it started.
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        report = await run(s, work, progress)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(render(report))
    return 0 if report.jobs.lost == 0 and report.jobs.duplicated == 0 else 1
