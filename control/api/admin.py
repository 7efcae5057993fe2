"""The operator's key and tenant endpoints: `key.create|list|rotate|revoke`, `tenant.create|list`.

The service lets only operator keys reach these; each takes the raw request body and answers
the encoded reply, raising ApiFailure otherwise.
"""

from __future__ import annotations

import asyncpg

from control.api import keys, tenants
from control.api.failure import ApiFailure
from schemas import api
from schemas.codec import Decoder, encode

KEY_CREATE: Decoder[api.KeyCreateRequest] = Decoder(api.KeyCreateRequest, "key create request")
KEY_ROTATE: Decoder[api.KeyRotateRequest] = Decoder(api.KeyRotateRequest, "key rotate request")
KEY_REF: Decoder[api.KeyRef] = Decoder(api.KeyRef, "key ref")
KEY_LIST: Decoder[api.KeyListRequest] = Decoder(api.KeyListRequest, "key list request")
TENANT_CREATE: Decoder[api.TenantCreateRequest] = Decoder(
    api.TenantCreateRequest, "tenant create request"
)


async def key_create(db: asyncpg.Pool, data: bytes) -> bytes:
    req = KEY_CREATE.decode(data)
    try:
        key, info = await keys.insert_key(
            db, req.tenant, role=req.role, name=req.name, expires_in_s=req.expires_in_s
        )
    except keys.UnknownTenant as exc:
        raise ApiFailure(404, str(exc)) from None
    return encode(api.KeyCreated(key=key, info=info))


async def key_list(db: asyncpg.Pool, data: bytes) -> bytes:
    req = KEY_LIST.decode(data)
    return encode(api.KeyListReply(keys=await keys.list_keys(db, req.tenant)))


async def key_rotate(db: asyncpg.Pool, data: bytes) -> bytes:
    req = KEY_ROTATE.decode(data)
    created = await keys.rotate_key(db, req.key_id, req.grace_s, req.expires_in_s)
    if created is None:
        raise ApiFailure(404, f"no active key {req.key_id} (unknown, revoked or expired)")
    return encode(created)


async def key_revoke(db: asyncpg.Pool, data: bytes) -> bytes:
    req = KEY_REF.decode(data)
    done = await keys.revoke_key(db, req.key_id)
    if done is None:
        raise ApiFailure(404, f"no key {req.key_id}")
    message = "revoked" if done else "already revoked"
    return encode(api.AckReply(ok=True, message=f"{req.key_id} {message}"))


async def tenant_create(db: asyncpg.Pool, data: bytes) -> bytes:
    req = TENANT_CREATE.decode(data)
    created = await tenants.add_tenant(db, req)
    if created is None:
        raise ApiFailure(409, f"tenant {req.tenant!r} exists")
    return encode(created)


async def tenant_list(db: asyncpg.Pool, data: bytes) -> bytes:
    return encode(api.TenantListReply(tenants=await tenants.list_tenants(db)))
