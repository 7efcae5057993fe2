"""s3:// inputs and outputs, and signed-URL outputs, against a real S3-compatible HTTP server
(moto's, started here: tests/support/s3server.py says what it does and does not check)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import obstore
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from obstore.store import S3Store

from daemon.config import MediaSettings, S3Settings
from daemon.errors import InputError, InvalidJob, JobError, PathRefused
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media import s3
from daemon.media.access import MediaAccess
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.codec import DecodeError, Decoder
from schemas.jobs import JobSpec
from schemas.operations import Operation, Package, Rung, Transcode
from tests.support.daemons import events, has, submit, until
from tests.support.media import media_duration
from tests.support.probing import video_line
from tests.support.s3server import PART_MIN, S3Server, s3_server

BUCKET, OTHER = "media", "elsewhere"


async def _no_progress(update: ProgressUpdate) -> None:
    return None


@pytest_asyncio.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """Signatures checked: every request must be signed with the IAM key the server made."""
    async with s3_server(tmp_path_factory.mktemp("s3"), [BUCKET, OTHER]) as srv:
        yield srv


@pytest.fixture(scope="module")
def secret_file(server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("s3secret") / "secret"
    path.write_text(server.secret_access_key + "\n")
    return path


def _settings(server: S3Server, secret_file: Path | None, **over: Any) -> MediaSettings:
    s3s = S3Settings(
        buckets=[BUCKET], endpoint_url=server.endpoint, region=server.region,
        access_key_id=server.access_key_id if secret_file else None,
        secret_access_key_file=str(secret_file) if secret_file else None,
        allow_http=True, retries=1,
    )  # fmt: skip
    s3s = msgspec.structs.replace(s3s, **over)
    return MediaSettings(s3=s3s, http_retries=0, http_allow_private=True)


def _ctx(tools: FfmpegTools, tmp: Path, spec: JobSpec, media: MediaSettings) -> JobContext:
    """`tmp` is the attempt's one allowed root (file:// inputs are read from it)."""
    scratch = tmp / f"scratch-{len(list(tmp.iterdir()))}"
    scratch.mkdir()
    return JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=frozenset({"libx264", "aac", "mjpeg"}), hwaccels=frozenset(),
        threads=1, allowed_roots=[tmp], progress=_no_progress, media=MediaAccess(limits=media),
    )  # fmt: skip


def _spec(src: str, out: str | None, op: Operation | None = None) -> JobSpec:
    return JobSpec(job_id="s1", input=src, output=out,
                   operation=op or Transcode(codec="h264", preset="ultrafast"))  # fmt: skip


def _local(clip: Path, tmp: Path) -> str:
    """A file:// input under the test's root."""
    (tmp / "local.mp4").write_bytes(clip.read_bytes())
    return (tmp / "local.mp4").as_uri()


async def _put(server: S3Server, key: str, path: Path) -> None:
    body = await asyncio.to_thread(path.read_bytes)
    await asyncio.to_thread(server.client().put_object, Bucket=BUCKET, Key=key, Body=body)


async def _fetch(server: S3Server, key: str, dest: Path) -> dict[str, Any]:
    """The object's head, its body written to `dest` (read with the test's own client)."""
    client = server.client()
    head: dict[str, Any] = await asyncio.to_thread(client.head_object, Bucket=BUCKET, Key=key)
    got = await asyncio.to_thread(client.get_object, Bucket=BUCKET, Key=key)
    await asyncio.to_thread(dest.write_bytes, got["Body"].read())
    return head


async def test_transcode_from_s3_to_s3(
    server: S3Server, secret_file: Path, ffmpeg_tools: FfmpegTools, clip_small: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _put(server, "in/clip.mp4", clip_small)
    out = f"s3://{BUCKET}/out/s1/small.mp4"
    spec = _spec(f"s3://{BUCKET}/in/clip.mp4", out)
    ctx = _ctx(ffmpeg_tools, tmp_path, spec, _settings(server, secret_file))
    result = await run_operation(ctx)
    [produced] = result.outputs
    assert produced.uri == out
    back = tmp_path / "back.mp4"
    head = await _fetch(server, "out/s1/small.mp4", back)
    data = await asyncio.to_thread(back.read_bytes)
    assert (produced.size_bytes, produced.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert head["Metadata"]["sha256"] == produced.sha256
    assert "-" not in head["ETag"]  # one part: smaller than part_size
    assert abs(await media_duration(ffmpeg_tools.ffmpeg, back) - 1.0) < 0.1
    assert "h264" in await video_line(ffmpeg_tools.ffmpeg, back)
    assert result.input_size_bytes == len(await asyncio.to_thread(clip_small.read_bytes))


async def test_multipart_output_and_a_second_upload_of_the_same_bytes(
    server: S3Server, secret_file: Path, ffmpeg_tools: FfmpegTools, clip_small: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _put(server, "in/mp.mp4", clip_small)
    media = _settings(server, secret_file, part_size=PART_MIN)
    spec = _spec(f"s3://{BUCKET}/in/mp.mp4", f"s3://{BUCKET}/out/mp/big.mp4")
    result = await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, media))
    [produced] = result.outputs
    parts = -(-produced.size_bytes // PART_MIN)
    assert parts > 1
    back = tmp_path / "big.mp4"
    head = await _fetch(server, "out/mp/big.mp4", back)
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's multipart ETag: `<md5>-<parts>`
    data = await asyncio.to_thread(back.read_bytes)
    assert hashlib.sha256(data).hexdigest() == produced.sha256
    assert abs(await media_duration(ffmpeg_tools.ffmpeg, back) - 1.0) < 0.1
    # A redelivered attempt uploading the same bytes (here in one part) leaves the object alone.
    single = MediaAccess(limits=_settings(server, secret_file))
    again = await s3.upload(single.s3_stores, BUCKET, "out/mp/big.mp4", back, within=60)
    assert again == (produced.size_bytes, produced.sha256)
    assert (await _fetch(server, "out/mp/big.mp4", back))["ETag"] == head["ETag"]
    # Other bytes under that key replace it.
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 100)
    await s3.upload(single.s3_stores, BUCKET, "out/mp/big.mp4", other, within=60)
    assert (await _fetch(server, "out/mp/big.mp4", back))["ContentLength"] == 100


async def test_package_files_go_next_to_the_key(
    server: S3Server, secret_file: Path, ffmpeg_tools: FfmpegTools, clip_small: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _put(server, "in/pkg.mp4", clip_small)
    op = Package(ladder=[Rung(height=96, bitrate_kbps=200)], segment_seconds=1.0,
                 preset="ultrafast")  # fmt: skip
    spec = _spec(f"s3://{BUCKET}/in/pkg.mp4", f"s3://{BUCKET}/pkg/s1", op)
    result = await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, _settings(server, secret_file)))
    assert f"s3://{BUCKET}/pkg/s1/master.m3u8" in {o.uri for o in result.outputs}
    listed = await asyncio.to_thread(server.client().list_objects_v2, Bucket=BUCKET, Prefix="pkg/")
    keys = {o["Key"] for o in listed["Contents"]}
    assert {"pkg/s1/master.m3u8", "pkg/s1/stream_0/index.m3u8"} <= keys
    index = tmp_path / "index.m3u8"
    await _fetch(server, "pkg/s1/stream_0/index.m3u8", index)
    text = await asyncio.to_thread(index.read_text)
    named = [line for line in text.splitlines() if line and line[0] != "#"]
    assert named and {f"pkg/s1/stream_0/{n}" for n in named} <= keys  # every segment uploaded


async def test_credentials_from_the_environment(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, clip_small: Path, tmp_path: Path
) -> None:
    await _put(server, "in/env.mp4", clip_small)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    media = MediaAccess(limits=_settings(server, None))
    dest = tmp_path / "env.mp4"
    size = await s3.download(media.s3_stores, BUCKET, "in/env.mp4", dest, cap=10**9, within=60)
    body = await asyncio.to_thread(dest.read_bytes)
    assert body == await asyncio.to_thread(clip_small.read_bytes) and size == len(body)


async def test_bad_credentials_fail_clearly_and_stay_secret(
    server: S3Server, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    await _put(server, "in/bad.mp4", clip_small)
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret-" + "x" * 24)
    media = _settings(server, wrong, retries=0)
    caplog.set_level(logging.DEBUG)
    for src in (f"s3://{BUCKET}/in/bad.mp4", _local(clip_small, tmp_path)):
        spec = _spec(src, f"s3://{BUCKET}/out/bad/x.mp4")
        with pytest.raises(JobError, match="refused this node's credentials") as caught:
            await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, media))
        # Transient: the job is fine, the node's configuration is not (another node may run it).
        assert caught.value.kind == "transient"
        assert "not-the-secret" not in str(caught.value)
    assert "not-the-secret" not in caplog.text
    assert server.secret_access_key not in caplog.text


async def test_refusals_are_permanent(
    server: S3Server, secret_file: Path, ffmpeg_tools: FfmpegTools, clip_small: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _put(server, "in/ok.mp4", clip_small)
    media = _settings(server, secret_file)
    ok = f"s3://{BUCKET}/in/ok.mp4"
    cases: list[tuple[str, str | None, MediaSettings, type[JobError], str]] = [
        # OTHER exists and the node's key may write it: only the allow-list stops the job.
        (ok, f"s3://{OTHER}/out/x.mp4", media, PathRefused, "not one this node may use"),
        (f"s3://{OTHER}/in/ok.mp4", f"s3://{BUCKET}/o.mp4", media, PathRefused, "not one"),
        (f"s3://{BUCKET}/in/none.mp4", f"s3://{BUCKET}/o.mp4", media, InputError, "not found"),
        (ok, f"s3://{BUCKET}/a/../b.mp4", media, PathRefused, "bad object key"),
        (ok, f"s3://{BUCKET}/o.mp4", _settings(server, secret_file, buckets=[]), PathRefused,
         "s3:// is off"),
        (ok, "s3://absent/o.mp4", _settings(server, secret_file, buckets=[BUCKET, "absent"]),
         InvalidJob, "bucket does not exist"),
        (ok, f"s3://{BUCKET}/o.mp4", msgspec.structs.replace(media, max_input_bytes=1000),
         InputError, "over the input cap"),
    ]  # fmt: skip
    for src, out, settings, error, needle in cases:
        with pytest.raises(error, match=needle) as caught:
            await run_operation(_ctx(ffmpeg_tools, tmp_path, _spec(src, out), settings))
        assert caught.value.kind == "permanent"
    listed = await asyncio.to_thread(server.client().list_objects_v2, Bucket=OTHER)
    assert listed.get("KeyCount", 0) == 0


async def test_a_node_without_the_s3_extra_names_it(
    server: S3Server, secret_file: Path, ffmpeg_tools: FfmpegTools, clip_small: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "obstore.store", None)  # as if obstore were not installed
    spec = _spec(_local(clip_small, tmp_path), f"s3://{BUCKET}/out/noextra.mp4")
    with pytest.raises(JobError, match=r"flotilla-fleet\[s3\]") as caught:
        await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, _settings(server, secret_file)))
    assert caught.value.kind == "transient"  # a node with the extra may run the job


def test_uris_in_the_wire_contract() -> None:
    body = b'{"v":1,"job_id":"w","input":"s3://media/in/a.mp4","output":"%s",' \
           b'"operation":{"op":"transcode"}}'  # fmt: skip
    decoder = Decoder(JobSpec)
    for out in ("s3://media/o.mp4", "https://h.example/o.mp4?X-Amz-Signature=ab"):
        assert decoder.decode(body % out.encode()).output == out
    with pytest.raises(DecodeError, match="s3"):
        decoder.decode(body % b"ftp://h.example/o.mp4")


@pytest_asyncio.fixture(scope="module")
async def open_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """moto does not check query signatures: presigned PUTs need a server with auth off."""
    async with s3_server(tmp_path_factory.mktemp("s3open"), [BUCKET], auth=False) as srv:
        yield srv


async def _presign(server: S3Server, key: str) -> str:
    store = S3Store(
        BUCKET, endpoint=server.endpoint, region=server.region,
        access_key_id=server.access_key_id, secret_access_key=server.secret_access_key,
        client_options={"allow_http": True},
    )  # fmt: skip
    return await obstore.sign_async(store, "PUT", key, timedelta(minutes=10))


async def test_presigned_put_output(
    open_server: S3Server, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    url = await _presign(open_server, "signed/out.mp4")
    assert "X-Amz-Signature=" in url
    media = _settings(open_server, None, buckets=[], signed_url_hosts=["127.0.0.1"])
    spec = _spec(_local(clip_small, tmp_path), url)
    result = await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, media))
    [produced] = result.outputs
    assert produced.uri == url.split("?", 1)[0]  # reported without the signature
    back = tmp_path / "signed.mp4"
    await _fetch(open_server, "signed/out.mp4", back)
    data = await asyncio.to_thread(back.read_bytes)
    assert (produced.size_bytes, produced.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert abs(await media_duration(ffmpeg_tools.ffmpeg, back) - 1.0) < 0.1


async def test_signed_url_outputs_are_refused_unless_allowed(
    open_server: S3Server, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    url = await _presign(open_server, "signed/no.mp4")
    allowed = _settings(open_server, None, signed_url_hosts=["127.0.0.1"])
    package = Package(ladder=[Rung(height=96, bitrate_kbps=200)], preset="ultrafast")
    cases: list[tuple[str, MediaSettings, Operation | None, type[JobError], str]] = [
        (url, _settings(open_server, None), None, PathRefused, "signed-URL outputs are off"),
        (url, _settings(open_server, None, signed_url_hosts=["s3.example"]), None, PathRefused,
         "not on this node's signed-URL allow-list"),
        (url, _settings(open_server, None, signed_url_hosts=["127.0.0.1"], allow_http=False),
         None, PathRefused, "scheme"),
        (url.split("?", 1)[0], allowed, None, PathRefused, "presigned"),
        (url, allowed, package, InvalidJob, "one file"),
        (url, msgspec.structs.replace(allowed, http_allow_private=False), None, PathRefused,
         "non-public"),
    ]  # fmt: skip
    for out, settings, op, error, needle in cases:
        spec = _spec(_local(clip_small, tmp_path), out, op)
        with pytest.raises(error, match=needle) as caught:
            await run_operation(_ctx(ffmpeg_tools, tmp_path, spec, settings))
        assert caught.value.kind == "permanent"
        assert "X-Amz-Signature" not in str(caught.value)
    listed = await asyncio.to_thread(open_server.client().list_objects_v2, Bucket=BUCKET)
    assert "signed/no.mp4" not in {o["Key"] for o in listed.get("Contents", [])}


def _job(job_id: str, src: str, out: str) -> dict[str, Any]:
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast", "width": 160, "height": 120}
    return {"v": 1, "job_id": job_id, "input": src, "output": out, "operation": op,
            "max_attempts": 2}  # fmt: skip


async def test_daemon_end_to_end_keeps_secrets_out_of_events_and_logs(
    js: JetStreamContext, prefix: str, start_daemon: Any, server: S3Server, secret_file: Path,
    open_server: S3Server, ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A real daemon: an s3:// round trip and a signed-URL output; then a node whose secret is
    wrong. Neither secret nor signature may reach an event or a log line."""
    caplog.set_level(logging.DEBUG)
    await _put(server, "in/e2e.mp4", clip_small)
    s3cfg = {
        "buckets": [BUCKET], "endpoint_url": server.endpoint, "region": server.region,
        "access_key_id": server.access_key_id, "secret_access_key_file": str(secret_file),
        "allow_http": True, "retries": 1, "signed_url_hosts": ["127.0.0.1"],
    }  # fmt: skip
    media = {"s3": s3cfg, "http_allow_private": True, "http_retries": 0}
    good = await start_daemon("n1", media=media)
    url = await _presign(open_server, "signed/e2e.mp4")
    signature = url.split("X-Amz-Signature=", 1)[1].split("&", 1)[0]
    await submit(js, prefix, _job("e2e-s3", f"s3://{BUCKET}/in/e2e.mp4",
                                  f"s3://{BUCKET}/out/e2e.mp4"))  # fmt: skip
    await submit(js, prefix, _job("e2e-signed", f"s3://{BUCKET}/in/e2e.mp4", url))
    await until(has(js, prefix, "e2e-s3", "completed"))
    await until(has(js, prefix, "e2e-signed", "completed"))
    for key in ("out/e2e.mp4",):
        back = tmp_path / "e2e.mp4"
        await _fetch(server, key, back)
        assert "h264" in await video_line(ffmpeg_tools.ffmpeg, back)
    back = tmp_path / "e2e-signed.mp4"
    await _fetch(open_server, "signed/e2e.mp4", back)
    assert "160x120" in await video_line(ffmpeg_tools.ffmpeg, back)
    done = [e for e in await events(js, prefix, "e2e-signed") if e["kind"] == "completed"]
    assert done[0]["result"]["outputs"][0]["uri"] == url.split("?", 1)[0]
    await good.stop()

    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-secret-" + "y" * 27)
    bad_media = {**media, "s3": {**s3cfg, "secret_access_key_file": str(wrong)}}
    await start_daemon("n2", media=bad_media)
    await submit(js, prefix, _job("e2e-bad", f"s3://{BUCKET}/in/e2e.mp4",
                                  f"s3://{BUCKET}/out/bad.mp4"))  # fmt: skip
    await until(has(js, prefix, "e2e-bad", "failed", 2))
    failed = [e for e in await events(js, prefix, "e2e-bad") if e["kind"] == "failed"]
    assert failed[-1]["final"] and failed[-1]["error_kind"] == "transient"
    assert "refused this node's credentials" in failed[-1]["reason"]
    every = await events(js, prefix)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("flotilla"))
    assert "refused this node's credentials" in ours  # the daemon's own lines were captured
    for secret in (server.secret_access_key, "wrong-secret-"):
        assert [e for e in every if secret in json.dumps(e)] == []
        assert secret not in ours
    # The signature is part of the job (the producer put it there): the `accepted` event's copy
    # of the spec carries it, as the job stream does; nothing the node reports or logs does.
    leaks = [e["kind"] for e in every if signature in json.dumps(e)]
    assert leaks == ["accepted"]
    assert signature not in ours
