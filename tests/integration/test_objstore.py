"""nats-obj:// inputs and outputs against a real nats-server's object store, and the topology's
media bucket that `flotilla submit --upload` and the daemons share."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.object_store import ObjectStore

from control.cli.upload import put_file, upload_key
from control.topology import TopologySettings, ensure_topology
from daemon.config import MediaSettings
from daemon.errors import InputError, JobError, PathRefused
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.media.objstore import download, parse_obj_uri, upload
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.jobs import JobSpec
from schemas.operations import Operation, Package, Probe, Rung, Thumbnail, Transcode
from schemas.subjects import Subjects
from tests.support.media import media_duration


async def _no_progress(update: ProgressUpdate) -> None:
    return None


async def _bucket(nc: NATS, prefix: str) -> tuple[str, ObjectStore]:
    js = nc.jetstream(timeout=10)
    name = f"{prefix}_media"
    return name, await js.create_object_store(name)


def _ctx(
    nc: NATS, tools: FfmpegTools, tmp: Path, bucket: str, spec: JobSpec, **limits: int
) -> JobContext:
    scratch = tmp / f"scratch-{len(list(tmp.iterdir()))}"
    scratch.mkdir()
    settings = msgspec.structs.replace(MediaSettings(), **limits)
    js = nc.jetstream(timeout=10)
    media = MediaAccess(limits=settings, js=js, buckets=frozenset({bucket}))
    return JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=frozenset({"libx264", "aac", "mjpeg"}), hwaccels=frozenset(),
        threads=1, allowed_roots=[tmp], progress=_no_progress, media=media,
    )  # fmt: skip


def _spec(src: str, op: Operation, out: str | None = None) -> JobSpec:
    return JobSpec(job_id="o1", input=src, output=out, operation=op)


async def test_topology_creates_the_media_bucket(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix=prefix)
    js = nc.jetstream(timeout=10)
    first = await ensure_topology(js, subjects, TopologySettings())
    second = await ensure_topology(js, subjects, TopologySettings())
    name = f"object store {subjects.objects_bucket}"
    assert name in first.created and name in second.unchanged
    await js.object_store(subjects.objects_bucket)  # what `submit --upload` opens


async def test_round_trip_byte_for_byte(nc: NATS, prefix: str, clip: Path, tmp_path: Path) -> None:
    name, _ = await _bucket(nc, prefix)
    js = nc.jetstream(timeout=10)
    size, digest = await upload(js, name, "a/clip.mp4", clip, within=30)
    data = await asyncio.to_thread(clip.read_bytes)
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    dest = tmp_path / "back.mp4"
    assert await download(js, name, "a/clip.mp4", dest, cap=10**9, within=30) == len(data)
    assert dest.read_bytes() == data
    with pytest.raises(InputError, match="over the input cap"):
        await download(js, name, "a/clip.mp4", tmp_path / "x", cap=100, within=30)
    with pytest.raises(InputError, match="not found"):
        await download(js, name, "a/missing.mp4", tmp_path / "y", cap=10**9, within=30)


async def test_corrupt_object_is_detected(
    nc: NATS, prefix: str, clip: Path, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    js = nc.jetstream(timeout=10)
    await upload(js, name, "c.mp4", clip, within=30)
    # Rewrite the metadata with another digest, as a damaged or tampered store would hold.
    info = await store.get_info("c.mp4")
    meta = info.as_dict()
    meta["digest"] = "SHA-256=" + base64.urlsafe_b64encode(b"\0" * 32).decode()
    subject = f"$O.{name}.M.{base64.urlsafe_b64encode(b'c.mp4').decode()}"
    await js.publish(subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"})
    with pytest.raises(JobError, match="corrupt") as caught:
        await download(js, name, "c.mp4", tmp_path / "c.mp4", cap=10**9, within=30)
    assert caught.value.kind == "transient"


def test_uri_policy() -> None:
    buckets = {"flotilla_media"}
    assert parse_obj_uri("nats-obj://flotilla_media/uploads/j/a%20b.mp4", buckets) == (
        "flotilla_media",
        "uploads/j/a b.mp4",
    )
    for bad in (
        "nats-obj://other_media/a.mp4",
        "nats-obj://flotilla_media/",
        "nats-obj://flotilla_media/a/../b.mp4",
        "nats-obj://flotilla_media/a.mp4?x=1",
        "nats-obj://flotilla_media/a%00.mp4",
    ):
        with pytest.raises(PathRefused):
            parse_obj_uri(bad, buckets)


async def test_transcode_from_and_to_the_object_store(
    nc: NATS, prefix: str, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    key = upload_key("o1", clip_small)  # where `flotilla submit --upload` puts it
    await put_file(store, key, clip_small)
    src = f"nats-obj://{name}/{key}"
    out = f"nats-obj://{name}/outputs/o1/small.mp4"
    op = Transcode(codec="h264", preset="ultrafast")
    result = await run_operation(_ctx(nc, ffmpeg_tools, tmp_path, name, _spec(src, op, out)))
    [produced] = result.outputs
    assert produced.uri == out
    back = tmp_path / "small.mp4"
    js = nc.jetstream(timeout=10)
    assert await download(js, name, "outputs/o1/small.mp4", back, cap=10**9, within=30) > 0
    data = await asyncio.to_thread(back.read_bytes)
    assert (produced.size_bytes, produced.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert abs(await media_duration(ffmpeg_tools.ffmpeg, back) - 1.0) < 0.1


async def test_sprite_and_index_are_both_uploaded(
    nc: NATS, prefix: str, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    await put_file(store, "in/clip.mp4", clip_small)
    spec = _spec(
        f"nats-obj://{name}/in/clip.mp4",
        Thumbnail(sprite=True, tiles=4, columns=2, width=64),
        f"nats-obj://{name}/thumbs/sheet.jpg",
    )
    result = await run_operation(_ctx(nc, ffmpeg_tools, tmp_path, name, spec))
    uris = sorted(o.uri for o in result.outputs)
    assert uris == [
        f"nats-obj://{name}/thumbs/sheet.jpg",
        f"nats-obj://{name}/thumbs/sheet.jpg.vtt",
    ]
    vtt = await store.get("thumbs/sheet.jpg.vtt")
    assert vtt.data is not None and vtt.data.startswith(b"WEBVTT")


async def test_object_inputs_are_refused_by_policy_and_limits(
    nc: NATS, prefix: str, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    await put_file(store, "in/clip.mp4", clip_small)
    cases: list[tuple[str, dict[str, int], type[JobError], str]] = [
        ("nats-obj://elsewhere/in/clip.mp4", {}, PathRefused, "not one this node may use"),
        (f"nats-obj://{name}/in/none.mp4", {}, InputError, "not found"),
        (f"nats-obj://{name}/in/clip.mp4", {"max_input_bytes": 1000}, InputError, "cap"),
        (f"nats-obj://{name}/in/clip.mp4", {"max_streams": 1}, InputError, "streams"),
    ]
    for uri, limits, error, needle in cases:
        ctx = _ctx(nc, ffmpeg_tools, tmp_path, name, _spec(uri, Probe()), **limits)
        with pytest.raises(error, match=needle):
            async with asyncio.timeout(60):
                await run_operation(ctx)


async def test_package_directory_is_uploaded_under_the_key(
    nc: NATS, prefix: str, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    await put_file(store, "in/clip.mp4", clip_small)
    op = Package(
        ladder=[Rung(height=96, bitrate_kbps=200)], segment_seconds=1.0, preset="ultrafast"
    )
    spec = _spec(f"nats-obj://{name}/in/clip.mp4", op, f"nats-obj://{name}/pkg/o1")
    result = await run_operation(_ctx(nc, ffmpeg_tools, tmp_path, name, spec))
    master = f"nats-obj://{name}/pkg/o1/master.m3u8"
    assert master in {o.uri for o in result.outputs}
    keys = {info.name for info in await store.list()}
    assert "pkg/o1/master.m3u8" in keys and "pkg/o1/stream_0/index.m3u8" in keys
    assert any(k.startswith("pkg/o1/stream_0/seg_") for k in keys)
    body = (await store.get("pkg/o1/master.m3u8")).data
    assert body is not None and b"stream_0/index.m3u8" in body
