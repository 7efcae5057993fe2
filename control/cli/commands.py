"""Handlers of the service and setup commands: schema export, nats init, probe, daemon, control."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from common.configfile import ConfigError
from common.logs import error_line
from control.cli.apiclient import Refusals, guarded, open_nats
from control.cli.context import Target, resolve
from control.cli.format import print_json
from control.config import load_control_config
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects


async def schema_export(args: argparse.Namespace) -> int:
    from schemas.export import export

    written = [str(path) for path in export(args.dir)]
    if args.json:
        print_json({"written": written})
    else:
        for path in written:
            print(path)
    return 0


async def nats_init(args: argparse.Namespace) -> int:
    target = resolve(args)
    topology = TopologySettings()
    if args.config is not None:
        cfg = load_control_config(args.config, required=True)
        topology = cfg.topology
        target = Target(cfg.nats) if not args.nats_url else target
    settings = target.settings
    refusals = Refusals(settings)
    nc = await open_nats(target, refusals)
    try:
        subjects = Subjects(settings.prefix, settings.partitions)
        report = await guarded(
            refusals,
            ensure_topology(nc.jetstream(timeout=5), subjects, topology, args.renew_node_bucket),
        )
    finally:
        await nc.close()
    if args.json:
        print(json.dumps(msgspec.to_builtins(report.__dict__)))
    else:
        for what, names in (("created", report.created), ("updated", report.updated)):
            for name in names:
                print(f"{what}: {name}")
        print(f"unchanged: {len(report.unchanged)} object(s)")
        for line in report.advice:
            print(f"note: {line}")
    return 0


async def probe(args: argparse.Namespace) -> int:
    from common.version import VERSION
    from daemon.config import load_daemon_config
    from daemon.ffmpeg.tools import find_tools
    from daemon.probe import probe_node
    from schemas.codec import encode

    cfg = load_daemon_config(args.config, required=False)
    tools = find_tools(cfg.ffmpeg, cfg.ffprobe)
    caps = await probe_node(cfg, tools.ffmpeg, VERSION)
    if args.json:
        sys.stdout.write(encode(caps).decode() + "\n")
        return 0
    print(f"node      {caps.node_id} ({caps.hostname}), flotilla {caps.daemon_version}")
    print(f"cpu       {caps.cpu.model}: {caps.cpu.physical_cores}c/{caps.cpu.logical_cores}t")
    print(f"memory    {caps.memory_total_bytes / 2**30:.1f} GiB")
    print(f"ffmpeg    {caps.ffmpeg.version} ({caps.ffmpeg.path})")
    print(f"gpus      {len(caps.gpus) or 'none'}")
    for gpu in caps.gpus:
        cap = gpu.encoder_session_limit if gpu.encoder_session_limit is not None else "?"
        tested = ", ".join(gpu.verified_encoders) or "none"
        print(f"  [{gpu.index}] {gpu.name} nvenc={gpu.nvenc} nvdec={gpu.nvdec} "
              f"sessions={cap} verified: {tested}")  # fmt: skip
    for node, names in caps.render_node_encoders.items():
        print(f"  {node}: {', '.join(names) or 'none'}")
    for note in caps.gpu_notes:
        print(f"  note: {note}")
    print(f"verified  {', '.join(caps.verified_encoders) or 'none'}")
    for dropped in caps.dropped_encoders:
        print(f"  dropped {dropped.name}: {dropped.reason}")
    slots = ", ".join(f"{p}={n}" for p, n in caps.slots.items())
    print(f"pools     {', '.join(caps.pools)} (slots: {slots})")
    return 0


async def daemon(args: argparse.Namespace) -> int:
    from daemon.main import serve_config

    # --log-json given: it wins over the config's log_json; not given: the config decides.
    return await serve_config(
        args.config, log_level=args.log_level_no, log_json=True if args.log_json else None
    )


#: A config the service cannot use: systemd's RestartPreventExitStatus=78 stops the loop.
EX_CONFIG = 78


async def control(args: argparse.Namespace) -> int:
    try:
        cfg = load_control_config(args.config)
    except ConfigError as exc:
        if args.action == "migrate":
            raise
        print(error_line(str(exc)), file=sys.stderr)
        return EX_CONFIG
    if args.action == "migrate":
        from control.db.migrate import migrate

        applied = await migrate(cfg.database_url)
        if args.json:
            print_json({"applied": applied})
        else:
            print(f"applied migrations: {applied or 'none (up to date)'}")
        return 0
    from common.logs import setup_logging
    from control.service import serve

    # The config's log_json applies unless --log-json was given.
    setup_logging(True if args.log_json else cfg.log_json, args.log_level_no)
    return await serve(args.config)


async def dev(args: argparse.Namespace) -> int:
    from control.devstack import require_embedded

    require_embedded()
    from control.cli.context import check_name
    from control.devstack.fleet import SAMPLE_CLIP, make_sample, run_dev

    if args.nodes < 1 or args.nodes > 16:
        raise ValueError("--nodes must be between 1 and 16")
    check_name(args.context)
    if args.root:
        return await run_dev(args.data, args.nodes, args.root, args.context)
    # The default root gets a clip to try jobs on, so README's quickstart runs as written.
    media = args.data.resolve() / "media"
    await make_sample(media / SAMPLE_CLIP)
    return await run_dev(args.data, args.nodes, [media], args.context, sample=media / SAMPLE_CLIP)
