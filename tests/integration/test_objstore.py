"""nats-obj:// inputs and outputs against a real nats-server's object store, and the topology's
media bucket that `flotilla submit --upload` and the daemons share."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.object_store import ObjectStore

from common.natsconn import NatsSettings
from control.cli.upload import put_file, upload_inputs, upload_key
from control.objsweep import OrphanSweep, SweepStats
from control.service import ControlPlane
from control.topology import TopologySettings, ensure_topology, refuse_rollups
from daemon.config import DaemonConfig, MediaSettings
from daemon.errors import InputError, JobError, PathRefused
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.media.objstore import (
    chunk_subject,
    delete_object,
    download,
    meta_subject,
    parse_obj_uri,
    upload,
)
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.jobs import JobSpec
from schemas.operations import Operation, Package, Probe, Rung, Thumbnail, Transcode
from schemas.subjects import Subjects
from tests.support.controlplane import control_config
from tests.support.media import media_duration


async def _no_progress(update: ProgressUpdate) -> None:
    return None


async def _bucket(nc: NATS, prefix: str, name: str = "") -> tuple[str, ObjectStore]:
    """A media bucket as the topology makes it: roll-up headers refused."""
    js = nc.jetstream(timeout=10)
    name = name or f"{prefix}_media"
    store = await js.create_object_store(name)
    await refuse_rollups(js, name)
    return name, store


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
    info = await js.stream_info(f"OBJ_{subjects.objects_bucket}")
    assert info.config.allow_rollup_hdrs is False
    # A bucket made before roll-ups were refused (nats-py's default) is fixed in place.
    info.config.allow_rollup_hdrs = True
    await js.update_stream(info.config)
    third = await ensure_topology(js, subjects, TopologySettings())
    assert f"{name} (allow_rollup_hdrs)" in third.updated
    info = await js.stream_info(f"OBJ_{subjects.objects_bucket}")
    assert info.config.allow_rollup_hdrs is False


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
    await js.publish(subject, json.dumps(meta).encode())  # the last meta message wins
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
    name, _ = await _bucket(nc, prefix)
    key = upload_key("default", "o1", clip_small)  # where `flotilla submit --upload` puts it
    await put_file(nc.jetstream(timeout=10), name, key, clip_small)
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
    await put_file(nc.jetstream(timeout=10), name, "in/clip.mp4", clip_small)
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
    name, _ = await _bucket(nc, prefix)
    await put_file(nc.jetstream(timeout=10), name, "in/clip.mp4", clip_small)
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
    await put_file(nc.jetstream(timeout=10), name, "in/clip.mp4", clip_small)
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


async def _chunk_subjects(nc: NATS, bucket: str) -> set[str]:
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.C.>")
    return set(info.state.subjects or {})


async def test_a_rollup_cannot_wipe_a_media_bucket(nc: NATS, prefix: str, tmp_path: Path) -> None:
    """One `Nats-Rollup: all` publish used to empty the bucket; the topology refuses roll-ups."""
    subjects = Subjects(prefix=prefix)
    js = nc.jetstream(timeout=10)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"], media_tenants=["acme"]))
    for bucket in (subjects.objects_bucket, f"{subjects.objects_bucket}_acme"):
        src = tmp_path / f"{bucket}.bin"
        src.write_bytes(b"keep me" * 100)
        await upload(js, bucket, "keep.bin", src, within=30)
        with pytest.raises(nats.js.errors.APIError):
            await js.publish(f"$O.{bucket}.C.x", b"", headers={"Nats-Rollup": "all"})
        back = tmp_path / f"{bucket}.back"
        assert await download(js, bucket, "keep.bin", back, cap=10**6, within=30) == 700


async def test_overwrite_without_purge_and_the_sweep_takes_only_orphans(
    nc: NATS, prefix: str, tmp_path: Path
) -> None:
    name, store = await _bucket(nc, prefix)
    tenant, _ = await _bucket(nc, prefix, f"{prefix}_media_acme")
    js = nc.jetstream(timeout=10)
    files = {}
    for label, size in (("v1", 300_000), ("v2", 200_000), ("live", 150_000), ("gone", 10)):
        files[label] = tmp_path / label
        files[label].write_bytes(label.encode() * size)
    await upload(js, name, "live.bin", files["live"], within=30)
    await upload(js, name, "k.bin", files["v1"], within=30)
    await upload(js, name, "k.bin", files["v2"], within=30)  # an overwrite: no purge right used
    await upload(js, name, "gone.bin", files["gone"], within=30)
    await delete_object(js, name, "gone.bin")
    await upload(js, tenant, "t.bin", files["v1"], within=30)
    await upload(js, tenant, "t.bin", files["live"], within=30)
    back = tmp_path / "back"
    await download(js, name, "k.bin", back, cap=10**9, within=30)
    assert back.read_bytes() == files["v2"].read_bytes()
    assert len(await _chunk_subjects(nc, name)) == 4 and len(await _chunk_subjects(nc, tenant)) == 2
    live = {
        chunk_subject(name, str((await store.get_info(key)).nuid)) for key in ("live.bin", "k.bin")
    }

    stats = await OrphanSweep(nc, name, grace=0.0).sweep()

    assert stats == SweepStats(buckets=2, metas_purged=3, orphans_purged=3)
    assert await _chunk_subjects(nc, name) == live
    assert len(await _chunk_subjects(nc, tenant)) == 1
    for key, label in (("k.bin", "v2"), ("live.bin", "live")):
        await download(js, name, key, back, cap=10**9, within=30)
        assert back.read_bytes() == files[label].read_bytes()
    await download(js, tenant, "t.bin", back, cap=10**9, within=30)
    assert back.read_bytes() == files["live"].read_bytes()
    with pytest.raises(InputError, match="not found"):
        await download(js, name, "gone.bin", back, cap=10**9, within=30)
    metas = await js.stream_info(f"OBJ_{name}", subjects_filter=f"$O.{name}.M.>")
    assert metas.state.subjects == {
        meta_subject(name, k): 1 for k in ("live.bin", "k.bin", "gone.bin")
    }
    assert await OrphanSweep(nc, name, grace=0.0).sweep() == SweepStats(buckets=2)


async def test_sweep_spares_fresh_orphans_and_uploads_in_progress(
    nc: NATS, prefix: str, tmp_path: Path
) -> None:
    name, _ = await _bucket(nc, prefix)
    js = nc.jetstream(timeout=10)
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    await upload(js, name, "k.bin", src, within=30)
    await upload(js, name, "k.bin", src, within=30)  # the first version's chunks: just orphaned
    await js.publish(chunk_subject(name, "INPROGRESS"), b"a chunk, no meta yet")
    before = await _chunk_subjects(nc, name)
    now = [0.0]
    sweep = OrphanSweep(nc, name, grace=3600.0, clock=lambda: now[0])
    assert (await sweep.sweep()).orphans_purged == 0
    now[0] += 7200.0  # seen unreferenced for longer than grace, but the chunks are still new
    assert (await sweep.sweep()).orphans_purged == 0
    assert await _chunk_subjects(nc, name) == before and len(before) == 3


async def test_tenant_buckets_are_checked_by_the_receiver(
    nc: NATS, prefix: str, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    """Nodes may reach every tenant's bucket, so a job may name only its own tenant's."""
    own, _ = await _bucket(nc, prefix, f"{prefix}_media_acme")
    other, _ = await _bucket(nc, prefix, f"{prefix}_media_rival")
    js = nc.jetstream(timeout=10)
    await put_file(js, other, "in/clip.mp4", clip_small)
    await put_file(js, own, "in/clip.mp4", clip_small)
    cfg = DaemonConfig(nats=NatsSettings(prefix=prefix), media=MediaSettings(tenant_buckets=True))
    media = MediaAccess.for_config(cfg, js)
    assert media.locate(f"nats-obj://{own}/in/clip.mp4", "acme") == (own, "in/clip.mp4")
    for bucket in (other, f"{prefix}_media"):
        with pytest.raises(PathRefused, match=bucket):
            media.locate(f"nats-obj://{bucket}/in/clip.mp4", "acme")
    listed = dataclasses.replace(media, buckets=frozenset({other}))
    with pytest.raises(PathRefused, match="not one this node may use"):
        listed.locate(f"nats-obj://{own}/in/clip.mp4", "acme")
    # The real operation path refuses the rival's input and the rival's output alike.
    for src, out in (
        (f"nats-obj://{other}/in/clip.mp4", None),
        (f"nats-obj://{own}/in/clip.mp4", f"nats-obj://{other}/out/x.jpg"),
    ):
        op: Operation = Probe() if out is None else Thumbnail()
        spec = msgspec.structs.replace(_spec(src, op, out), tenant="acme")
        ctx = dataclasses.replace(_ctx(nc, ffmpeg_tools, tmp_path, own, spec), media=media)
        with pytest.raises(PathRefused, match=other):
            async with asyncio.timeout(60):
                await run_operation(ctx)


async def test_upload_goes_to_the_tenant_bucket_when_there_is_one(
    nc: NATS, prefix: str, clip_small: Path
) -> None:
    subjects = Subjects(prefix=prefix)
    own, _ = await _bucket(nc, prefix, f"{prefix}_media_acme")
    acme = JobSpec(job_id="u1", input=str(clip_small), operation=Probe(), tenant="acme")
    other = msgspec.structs.replace(acme, job_id="u2", tenant="rival")
    assert (
        await upload_inputs(nc, subjects, acme)
    ).input == f"nats-obj://{own}/uploads/acme/u1/{clip_small.name}"
    shared = await upload_inputs(nc, subjects, other)  # no rival bucket: the shared one
    assert shared.input == f"nats-obj://{prefix}_media/uploads/rival/u2/{clip_small.name}"
    info = await nc.jetstream(timeout=10).stream_info(f"OBJ_{prefix}_media")
    assert info.config.allow_rollup_hdrs is False


@pytest.mark.timeout(180)
async def test_the_leading_control_plane_sweeps_orphans(
    nc: NATS, nats_url: str, prefix: str, database_url: str, tmp_path: Path
) -> None:
    cfg = control_config(
        nats_url, prefix, database_url, leader_lease_ttl=2.0, prune_interval=0.2,
        media_orphan_grace=0.5,
    )  # fmt: skip
    plane = ControlPlane(cfg)
    await plane.start()
    try:
        name = f"{prefix}_media"  # made by the plane's topology, roll-ups refused
        js = nc.jetstream(timeout=10)
        src = tmp_path / "src"
        src.write_bytes(b"first" * 1000)
        await upload(js, name, "k.bin", src, within=30)
        src.write_bytes(b"second" * 1000)
        await upload(js, name, "k.bin", src, within=30)
        info = await (await js.object_store(name)).get_info("k.bin")
        live = {chunk_subject(name, str(info.nuid))}
        for _ in range(600):
            if await _chunk_subjects(nc, name) == live:
                break
            await asyncio.sleep(0.1)
        assert await _chunk_subjects(nc, name) == live
        back = tmp_path / "back"
        await download(js, name, "k.bin", back, cap=10**9, within=30)
        assert back.read_bytes() == src.read_bytes()
    finally:
        await plane.stop()
