"""The CLI as an operator's tool, run as a child process: one-line errors and exit codes, the
version, results on stdout and logs on stderr (`--json` with `--log-level debug` stays one JSON
document), journald priorities, services exiting 78 on a bad config, cancel and drain saying
what happened, a refused path naming the allowed roots, and contexts that refuse a fleet that
is gone or another fleet on the same port. The fleet parts run against a real one-node dev fleet.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from tests.support.devfleet import CliResult, dev_fleet, open_dir, run_cli
from tests.support.fleetjobs import until_running
from tests.support.heldmedia import HeldMedia, held_media, node_settings
from tests.support.media import make_clip


def one_error_line(res: CliResult, code: int) -> str:
    assert res.rc == code, res
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flotilla: error: "), res.err
    return lines[0]


def closed_port() -> int:
    """A port nobody listens on (bound by nobody once this returns; nothing here listens)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-cliops-") as path:
        yield path


@pytest.fixture(scope="module")
def roots(work: Path) -> Path:
    """The fleet's one media root (resolved, as the node names it); `work` is outside it."""
    (work / "media").mkdir()
    return (work / "media").resolve()


@pytest_asyncio.fixture(scope="module")
async def src(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "ops.mp4", seconds=2)


@pytest_asyncio.fixture(scope="module")
async def media(src: Path) -> AsyncIterator[HeldMedia]:
    async with held_media(src) as m:
        yield m


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, roots: Path, media: HeldMedia) -> AsyncIterator[DevFleet]:
    # One slot: a held job keeps it, so a job submitted meanwhile stays queued.
    async with dev_fleet(work, 1, roots=[roots], node_settings=node_settings(slots=1)) as f:
        yield f


# -- without a fleet -----------------------------------------------------------------------


async def test_version_comes_from_the_package() -> None:
    res = await run_cli("--version")
    assert (
        res.rc == 0 and res.out == f"flotilla {importlib.metadata.version('flotilla-fleet')}\n"
    ), res


async def test_usage_errors_are_one_line_naming_the_option() -> None:
    line = one_error_line(await run_cli("nodes", "--bogus"), 2)
    assert "--bogus" in line
    line = one_error_line(await run_cli("nodes", "--log-level", "loud"), 2)
    assert "--log-level" in line and "debug, info, warning, error" in line
    line = one_error_line(await run_cli("nodes", env={"FLOTILLA_LOG_LEVEL": "loud"}), 2)
    assert "FLOTILLA_LOG_LEVEL 'loud'" in line
    line = one_error_line(await run_cli("drain", "n1", "--password", "pw"), 2)
    assert "--password needs --user" in line
    line = one_error_line(await run_cli("nodes", "--creds", "/no/such.creds"), 2)
    assert "--creds /no/such.creds: no such file" in line
    line = one_error_line(await run_cli("completion", "fish"), 2)
    assert "invalid choice: 'fish'" in line


async def test_unreachable_server_is_exit_3_with_logs_on_stderr() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    res = await run_cli("nodes", "--json", "--nats-url", url, "--log-level", "debug")
    assert res.rc == 3 and res.out == "", res
    assert (
        res.err.strip().splitlines()[-1].startswith(f"flotilla: error: cannot reach NATS at {url}")
    )
    assert "flotilla.nats" in res.err  # the debug lines, on stderr with the error


async def test_journal_stream_lines_carry_priorities(work: Path) -> None:
    """Run as systemd would: stderr is the journal stream JOURNAL_STREAM names."""
    path = work / "journal.txt"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control", "nodes", "--log-level", "debug",
            "--nats-url", f"nats://127.0.0.1:{closed_port()}",
            stdout=asyncio.subprocess.DEVNULL, stderr=stream,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )  # fmt: skip
        assert await proc.wait() == 3
    *logs, error = path.read_text().splitlines()
    assert logs and all(line.startswith("<7>") for line in logs), logs
    assert error.startswith("<3>flotilla: error: cannot reach NATS"), error


async def test_services_exit_78_on_a_bad_config(work: Path) -> None:
    """EX_CONFIG: the units' RestartPreventExitStatus=78 stops a restart loop on it."""
    bad = work / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    for service in ("control", "daemon"):
        res = await run_cli(service, "--config", str(bad))
        assert res.rc == 78, res
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and "no_such_key" in lines[0], res
        assert lines[0].startswith("flotilla: error: "), res
    res = await run_cli("control", "--config", str(bad), env={"FLOTILLA_LOG_LEVEL": "x"})
    assert res.rc == 78 and "FLOTILLA_LOG_LEVEL" in res.err, res
    # `control migrate` is a one-shot command: a bad config is bad input there.
    one_error_line(await run_cli("control", "migrate", "--config", str(bad)), 2)
    # An ffmpeg that is not there is a setting to fix too, not a crash to restart on.
    no_ffmpeg = work / "no-ffmpeg.toml"
    no_ffmpeg.write_text(
        'node_id = "n1"\nffmpeg = "/no/such/ffmpeg"\n[nats]\nurl = "nats://127.0.0.1:1"\n'
    )
    res = await run_cli("daemon", "--config", str(no_ffmpeg))
    assert res.rc == 78 and "'/no/such/ffmpeg' does not exist" in res.err, res
    assert len(res.err.strip().splitlines()) == 1, res
    line = one_error_line(await run_cli("probe", "--config", str(no_ffmpeg)), 2)
    assert "'/no/such/ffmpeg' does not exist" in line and "unexpected" not in line


# -- against the dev fleet -----------------------------------------------------------------


async def test_json_output_stays_clean_with_debug_logs(fleet: DevFleet) -> None:
    res = await run_cli("drain", "dev-1", "--json", "--log-level", "debug", "--log-json")
    try:
        assert res.rc == 0, res
        assert json.loads(res.out) == {
            "node_id": "dev-1", "ok": True, "message": "draining", "outcome": "draining",
        }  # fmt: skip
        logs = [json.loads(line) for line in res.err.splitlines()]
        assert logs and {line["level"] for line in logs} <= {"debug", "info", "warning"}
    finally:
        res = await run_cli("resume", "dev-1", "--json", "--log-level", "debug")
    assert res.rc == 0 and json.loads(res.out) == {
        "node_id": "dev-1", "ok": True, "message": "resumed",
    }, res  # fmt: skip
    res = await run_cli("nodes", "--json", "--log-level", "debug")
    assert res.rc == 0 and json.loads(res.out)["nodes"][0]["node_id"] == "dev-1", res


async def test_cancel_says_what_happened(
    fleet: DevFleet, media: HeldMedia, roots: Path, src: Path, work: Path
) -> None:
    (work / "hold-1.json").write_text(json.dumps(media.transcode("hold-1", roots)))
    try:
        assert (await run_cli("submit", str(work / "hold-1.json"))).rc == 0
        # The node's one slot runs hold-1 until released: jobs submitted now stay queued.
        await until_running(fleet, {"hold-1"}, 120.0)
        for job_id in ("q-1", "q-2"):
            res = await run_cli(
                "submit", "transcode", str(src), str(roots / f"{job_id}.mp4"), "--job-id", job_id
            )  # fmt: skip
            assert res.rc == 0, res
        res = await run_cli("cancel", "q-1")
        assert res.rc == 0 and res.out == "q-1: cancelled while queued\n", res
        res = await run_cli("cancel", "q-2", "--json")
        assert res.rc == 0, res
        doc = json.loads(res.out)
        assert (doc["job_id"], doc["ok"], doc["outcome"]) == ("q-2", True, "queued"), doc
        line = one_error_line(await run_cli("cancel", "q-1"), 2)
        assert "already cancelled" in line
        res = await run_cli("cancel", "hold-1")
        assert res.rc == 0 and res.out.startswith("hold-1: cancel sent to dev-1;"), res
        res = await run_cli("watch", "hold-1")
        assert res.rc == 1 and res.err.startswith("flotilla: error: hold-1 cancelled: "), res
    finally:
        media.release(["hold-1"])


async def test_a_path_outside_the_roots_names_them(
    fleet: DevFleet, work: Path, roots: Path, src: Path
) -> None:
    outside = work / "outside.mp4"
    shutil.copy(src, outside)
    res = await run_cli(
        "submit", "transcode", str(outside), str(roots / "never.mp4"), "--job-id", "roots-1",
        "--wait",
    )  # fmt: skip
    line = one_error_line(res, 1)
    assert "roots-1 failed: " in line and f"'{outside.as_uri()}' resolves outside" in line, line
    assert f"(allowed: {roots})" in line and "input under one of them" in line, line
    assert "or submit with --upload" in line, line
    assert res.out == "submitted roots-1 to pool cpu\n", res


# -- contexts ------------------------------------------------------------------------------


def _context(fleet: DevFleet) -> dict[str, str]:
    assert fleet.context_path is not None
    data: dict[str, str] = json.loads(fleet.context_path.read_text())
    return data


async def test_the_fleets_own_context_is_used(fleet: DevFleet) -> None:
    ctx = _context(fleet)
    assert ctx["nats_url"] == fleet.nats_url and ctx["fleet_id"].startswith("FLOTILLA_JOBS@")
    res = await run_cli("nodes", "--json")  # FLOTILLA_CONTEXT names the fleet's context file
    assert res.rc == 0 and json.loads(res.out)["nodes"][0]["node_id"] == "dev-1", res


async def test_a_context_refuses_another_fleet_on_its_port(fleet: DevFleet, work: Path) -> None:
    other = work / "other-fleet.json"
    other.write_text(json.dumps({**_context(fleet), "fleet_id": "FLOTILLA_JOBS@2001-01-01"}))
    line = one_error_line(await run_cli("nodes", "--context", str(other)), 3)
    assert "answers as another fleet" in line and str(other) in line, line
    # Same server, another prefix: its fleet's streams are not there at all.
    other.write_text(json.dumps({**_context(fleet), "prefix": "elsewhere"}))
    line = one_error_line(await run_cli("drain", "dev-1", "--context", str(other)), 3)
    assert "has no ELSEWHERE_JOBS stream" in line, line
    # An explicit URL is the operator's choice: no context, no check.
    res = await run_cli("nodes", "--json", "--nats-url", fleet.nats_url)
    assert res.rc == 0, res


async def test_a_context_whose_fleet_is_gone(fleet: DevFleet, work: Path) -> None:
    gone = work / "gone.json"
    url = f"nats://127.0.0.1:{closed_port()}"
    gone.write_text(json.dumps({**_context(fleet), "nats_url": url}))
    line = one_error_line(await run_cli("nodes", "--context", str(gone)), 3)
    assert f"its fleet at {url} is gone" in line and "flotilla dev" in line, line
    legacy = work / "legacy.json"
    legacy.write_text(json.dumps({"nats_url": fleet.nats_url, "prefix": fleet.prefix}))
    line = one_error_line(await run_cli("nodes", "--context", str(legacy)), 2)
    assert "records no fleet identity" in line, line


async def test_named_contexts_under_the_config_dir(fleet: DevFleet, work: Path) -> None:
    home = work / "config-home"
    (home / "flotilla" / "contexts").mkdir(parents=True)
    (home / "flotilla" / "contexts" / "mine.json").write_text(json.dumps(_context(fleet)))
    (home / "flotilla" / "current").write_text("mine\n")
    env = {"XDG_CONFIG_HOME": str(home), "FLOTILLA_CONTEXT": ""}
    res = await run_cli("nodes", "--json", env=env)
    assert res.rc == 0 and json.loads(res.out)["nodes"][0]["node_id"] == "dev-1", res
    res = await run_cli("nodes", "--context", "mine", env=env)
    assert res.rc == 0, res
    line = one_error_line(await run_cli("nodes", "--context", "theirs", env=env), 2)
    assert "no such context (known: mine)" in line, line
