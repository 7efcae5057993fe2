"""What the ffmpeg build offers: version, encoders, hwaccels and filters, from its listings."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

from daemon.probe.run import ProbeError, run_capture
from schemas.nodes import FfmpegInfo

#: Each listing takes milliseconds; the deadline only guards against a wedged binary.
LIST_TIMEOUT = 15.0


def parse_version(text: str) -> str:
    """`ffmpeg version n7.1-... Copyright ...` -> `n7.1-...`."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "version":
            return words[2]
    return "unknown"


def _rows_after_rule(text: str) -> list[list[str]]:
    """The table rows of `-encoders` / `-filters`: the lines after the `------` rule, split."""
    rows: list[list[str]] = []
    seen_rule = False
    for line in text.splitlines():
        stripped = line.strip()
        if not seen_rule:
            seen_rule = stripped.startswith("---") and set(stripped) == {"-"}
            continue
        if stripped:
            rows.append(stripped.split())
    return rows


def _unique(names: list[str]) -> list[str]:
    # Some builds list one encoder twice (libaom-av1); keep the first, in order.
    return list(dict.fromkeys(names))


def parse_encoders(text: str) -> list[str]:
    """Names from `ffmpeg -encoders`: rows are `V....D name  description`."""
    return _unique([row[1] for row in _rows_after_rule(text) if len(row) >= 2])


def parse_filters(text: str) -> list[str]:
    """Names from `ffmpeg -filters`: rows are `TS name  A->A  description`."""
    return _unique([row[1] for row in _rows_after_rule(text) if len(row) >= 3])


def parse_hwaccels(text: str) -> list[str]:
    """Names from `ffmpeg -hwaccels`: one per line after `Hardware acceleration methods:`."""
    names: list[str] = []
    started = False
    for line in text.splitlines():
        stripped = line.strip()
        if not started:
            started = stripped.lower().startswith("hardware acceleration methods")
        elif stripped:
            names.append(stripped)
    return _unique(names)


async def _listing(ffmpeg: str, flag: str, within: float) -> str:
    result = await run_capture([ffmpeg, "-hide_banner", "-nostdin", flag], within)
    if not result.ok:
        why = "timed out" if result.timed_out else (result.stderr.strip() or "failed")
        raise ProbeError(f"`{ffmpeg} {flag}` {why.splitlines()[-1]}")
    return result.stdout


async def probe_ffmpeg(ffmpeg: str, within: float = LIST_TIMEOUT) -> FfmpegInfo:
    """Run the four listings concurrently; raise ProbeError when the binary does not work."""
    version, encoders, hwaccels, filters = await asyncio.gather(
        _listing(ffmpeg, "-version", within),
        _listing(ffmpeg, "-encoders", within),
        _listing(ffmpeg, "-hwaccels", within),
        _listing(ffmpeg, "-filters", within),
    )
    return FfmpegInfo(
        path=ffmpeg,
        version=parse_version(version),
        encoders=parse_encoders(encoders),
        hwaccels=parse_hwaccels(hwaccels),
        filters=parse_filters(filters),
    )


#: The filter (libass) that burns subtitles in; a job asking for it goes only to nodes where it
#: drew a test cue (NodeCapabilities.verified_filters).
BURN_IN = "subtitles"
_YMAX = re.compile(r"lavfi\.signalstats\.YMAX=(\d+)")


async def verify_burn_in(
    ffmpeg: str, filters: list[str], within: float = LIST_TIMEOUT
) -> str | None:
    """None when libass drew a test cue onto a black frame; otherwise why burn-in is off. The
    filter alone is not enough: on a host without fonts it draws nothing, and no error."""
    if BURN_IN not in filters:
        return f"ffmpeg has no `{BURN_IN}` filter (built without libass)"
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="flotilla-burn-"))
    try:
        cue = folder / "cue.srt"
        await asyncio.to_thread(cue.write_text, "1\n00:00:00,000 --> 00:00:05,000\nXX\n")
        graph = f"{BURN_IN}=filename={cue},signalstats,metadata=mode=print"
        result = await run_capture(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info", "-f", "lavfi",
             "-i", "color=c=black:s=192x108:r=5:d=1", "-vf", graph, "-frames:v", "1",
             "-f", "null", "-"],
            within,
        )  # fmt: skip
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    found = _YMAX.search(result.stderr)
    if not result.ok or found is None:
        lines = result.stderr.strip().splitlines() or ["no output"]
        return f"the `{BURN_IN}` test render failed: {lines[-1][:200]}"
    if int(found.group(1)) < 64:  # black is 16; drawn text is far brighter
        return f"the `{BURN_IN}` filter drew nothing (no fonts for libass?)"
    return None
