"""`submit --upload`: local inputs go to the `<prefix>_media` object store; the spec names them.

Each file is streamed in chunks (nats-py reads the file object in a worker thread), never read
whole into memory. Keys are `uploads/<job_id>/<basename>`; the spec's URI becomes
`nats-obj://<bucket>/<key>`, which the daemons fetch into scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError
from nats.js.object_store import ObjectStore

from control.cli.jobflags import local_path
from control.errors import BadInput
from schemas.jobs import JobSpec
from schemas.operations import Analyze
from schemas.subjects import Subjects


async def media_store(nc: NATS, subjects: Subjects) -> ObjectStore:
    """The fleet's media bucket, created on first use."""
    js = nc.jetstream(timeout=10)
    try:
        return await js.object_store(subjects.objects_bucket)
    except BucketNotFoundError:
        return await js.create_object_store(subjects.objects_bucket)


def upload_key(job_id: str, path: Path) -> str:
    return f"uploads/{job_id}/{path.name}"


def _open(path: Path) -> io.BufferedReader:
    return path.open("rb")


async def put_file(store: ObjectStore, key: str, path: Path) -> int:
    """Stream one file into the store; returns its size."""
    try:
        handle = await asyncio.to_thread(_open, path)
    except OSError as exc:
        raise BadInput(f"cannot upload {path}: {exc.strerror or exc}") from exc
    try:
        info = await store.put(key, handle)
    finally:
        await asyncio.to_thread(handle.close)
    return int(info.size or 0)


async def upload_inputs(nc: NATS, subjects: Subjects, spec: JobSpec) -> JobSpec:
    """Upload the spec's local input (and an analyze job's reference); return the rewritten spec.

    Inputs that are not local files (http://, nats-obj://, …) are left as they are.
    """
    store = await media_store(nc, subjects)
    bucket = subjects.objects_bucket
    used: set[str] = set()

    async def rewrite(uri: str, role: str) -> str:
        path = local_path(uri)
        if path is None:
            return uri
        if not await asyncio.to_thread(path.is_file):
            raise BadInput(f"cannot upload {path}: not a file")
        key = upload_key(spec.job_id, path)
        if key in used:  # an analyze job's reference may share the input's basename
            key = upload_key(spec.job_id, path.with_name(f"{role}-{path.name}"))
        used.add(key)
        await put_file(store, key, path)
        return f"nats-obj://{bucket}/{key}"

    new_input = await rewrite(spec.input, "input")
    op = spec.operation
    if isinstance(op, Analyze):
        op = msgspec.structs.replace(op, reference=await rewrite(op.reference, "reference"))
    return msgspec.structs.replace(spec, input=new_input, operation=op)


async def discard_uploads(nc: NATS, subjects: Subjects, spec: JobSpec) -> None:
    """Delete what `upload_inputs` put for a job the API then refused (best effort)."""
    bucket_uri = f"nats-obj://{subjects.objects_bucket}/"
    head = f"{bucket_uri}uploads/{spec.job_id}/"
    uris = [spec.input]
    if isinstance(spec.operation, Analyze):
        uris.append(spec.operation.reference)
    store = await media_store(nc, subjects)
    for uri in uris:
        if uri.startswith(head):
            with contextlib.suppress(Exception):  # a leftover costs space, not correctness
                await store.delete(uri.removeprefix(bucket_uri))
