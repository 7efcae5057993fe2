"""`submit --upload`: local inputs go to the media object store; the spec names them.

The bucket is the job's tenant bucket `<prefix>_media_<tenant>` where one exists (per-tenant
buckets, `topology.media_tenants`), else `<prefix>_media`. Each file is streamed in chunks (read
in a worker thread), never read whole into memory, and written the way a client without purge
rights can (daemon.media.objstore.put_object). Keys are `uploads/<tenant>/<job_id>/<basename>`;
the spec's URI becomes `nats-obj://<bucket>/<key>`, which the daemons fetch into scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from control.cli.jobflags import local_path
from control.errors import BadInput
from control.topology import refuse_rollups
from daemon.media.objstore import delete_object, put_object
from schemas.jobs import JobSpec
from schemas.operations import Analyze
from schemas.subjects import Subjects


async def media_bucket(nc: NATS, subjects: Subjects, tenant: str) -> str:
    """The job's tenant bucket if the fleet has one, else the shared one (created on first use)."""
    js = nc.jetstream(timeout=10)
    own = f"{subjects.objects_bucket}_{tenant}"
    try:
        await js.object_store(own)
        return own
    except BucketNotFoundError:
        pass
    try:
        await js.object_store(subjects.objects_bucket)
    except BucketNotFoundError:
        await js.create_object_store(subjects.objects_bucket)
        await refuse_rollups(js, subjects.objects_bucket)
    return subjects.objects_bucket


def upload_key(tenant: str, job_id: str, path: Path) -> str:
    return f"uploads/{tenant}/{job_id}/{path.name}"


def _open(path: Path) -> io.BufferedReader:
    return path.open("rb")


async def put_file(js: JetStreamContext, bucket: str, key: str, path: Path) -> int:
    """Stream one file into the bucket; returns its size."""
    try:
        handle = await asyncio.to_thread(_open, path)
    except OSError as exc:
        raise BadInput(f"cannot upload {path}: {exc.strerror or exc}") from exc
    try:
        info = await put_object(js, bucket, key, handle)
    finally:
        await asyncio.to_thread(handle.close)
    return int(info.size or 0)


async def upload_inputs(nc: NATS, subjects: Subjects, spec: JobSpec) -> JobSpec:
    """Upload the spec's local input (and an analyze job's reference); return the rewritten spec.

    Inputs that are not local files (http://, nats-obj://, …) are left as they are.
    """
    bucket = await media_bucket(nc, subjects, spec.tenant)
    js = nc.jetstream(timeout=10)
    used: set[str] = set()

    async def rewrite(uri: str, role: str) -> str:
        path = local_path(uri)
        if path is None:
            return uri
        if not await asyncio.to_thread(path.is_file):
            raise BadInput(f"cannot upload {path}: not a file")
        key = upload_key(spec.tenant, spec.job_id, path)
        if key in used:  # an analyze job's reference may share the input's basename
            key = upload_key(spec.tenant, spec.job_id, path.with_name(f"{role}-{path.name}"))
        used.add(key)
        await put_file(js, bucket, key, path)
        return f"nats-obj://{bucket}/{key}"

    new_input = await rewrite(spec.input, "input")
    op = spec.operation
    if isinstance(op, Analyze):
        op = msgspec.structs.replace(op, reference=await rewrite(op.reference, "reference"))
    return msgspec.structs.replace(spec, input=new_input, operation=op)


async def discard_uploads(nc: NATS, subjects: Subjects, spec: JobSpec) -> None:
    """Delete what `upload_inputs` put for a job the API then refused (best effort)."""
    uris = [spec.input]
    if isinstance(spec.operation, Analyze):
        uris.append(spec.operation.reference)
    js = nc.jetstream(timeout=10)
    for bucket in (f"{subjects.objects_bucket}_{spec.tenant}", subjects.objects_bucket):
        bucket_uri = f"nats-obj://{bucket}/"
        head = f"{bucket_uri}uploads/{spec.tenant}/{spec.job_id}/"  # as upload_key names them
        for uri in uris:
            if uri.startswith(head):
                with contextlib.suppress(Exception):  # a leftover costs space, not correctness
                    await delete_object(js, bucket, uri.removeprefix(bucket_uri))
