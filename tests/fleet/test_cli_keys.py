"""`flotilla keys` and `flotilla tenants` against a real dev fleet: bootstrap the first operator
key from Postgres, make tenants and keys through the API, rotate and revoke them, and what a
tenant's key may not do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from control.devstack.fleet import DevFleet
from tests.support.devfleet import CliResult, dev_fleet, open_dir, run_cli


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-clikeys-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path) -> AsyncIterator[DevFleet]:
    async with dev_fleet(work, 1, roots=[media_dir, work / "out"]) as f:
        yield f


def key_of(res: CliResult) -> str:
    """A created key: the last line on stdout; stderr says it is shown once."""
    assert res.rc == 0, res
    assert "shown only this once" in res.err
    return res.out.strip().splitlines()[-1]


async def test_keys_from_bootstrap_to_revoke(fleet: DevFleet, clip_small: Path) -> None:
    # The first operator key needs no key: it is made in Postgres (the dev fleet's, from the
    # context file); a second bootstrap is refused while that key lives.
    res = await run_cli("keys", "bootstrap", "--json")
    assert res.rc == 0, res
    boot = json.loads(res.out)
    op = boot["key"]
    assert boot["info"]["role"] == "operator" and boot["info"]["tenant"] == "operators"
    res = await run_cli("keys", "bootstrap", "--db-url", fleet.database_url)
    assert res.rc == 1 and "active operator key" in res.err and "--force" in res.err
    assert "Traceback" not in res.err

    for tenant in ("acme", "bravo"):
        res = await run_cli("tenants", "create", tenant, "--api-key", op)
        assert res.rc == 0 and len(res.out.strip().splitlines()[-1]) == 64, res
    res = await run_cli("tenants", "create", "acme", "--api-key", op)
    assert res.rc == 2 and "exists" in res.err
    res = await run_cli("tenants", "list", "--json", "--api-key", op)
    assert {t["tenant"] for t in json.loads(res.out)["tenants"]} >= {"acme", "bravo", "operators"}

    res = await run_cli(
        "keys", "create", "--tenant", "acme", "--name", "ci", "--expires-in", "30d",
        "--api-key", op,
    )  # fmt: skip
    acme = key_of(res)
    bravo = key_of(await run_cli("keys", "create", "--tenant", "bravo", "--api-key", op))
    res = await run_cli("keys", "list", "--tenant", "acme", "--api-key", op)
    assert res.rc == 0 and "ci" in res.out and acme not in res.out
    res = await run_cli("keys", "list", "--json", "--api-key", op)
    listed = json.loads(res.out)["keys"]
    assert {k["tenant"] for k in listed} == {"operators", "acme", "bravo"}
    assert acme not in res.out and bravo not in res.out and op not in res.out
    acme_id = next(k["key_id"] for k in listed if k["tenant"] == "acme")

    # acme's job: its owner sees it, bravo gets "not found" as for any unknown job.
    res = await run_cli(
        "submit", "probe", str(clip_small), "--job-id", "acme-probe", "--tenant", "acme",
        "--api-key", acme,
    )  # fmt: skip
    assert res.rc == 0, res
    assert (await run_cli("status", "acme-probe", "--api-key", acme)).rc == 0
    res = await run_cli("status", "acme-probe", "--api-key", bravo)
    assert res.rc == 4 and "no job 'acme-probe'" in res.err
    res = await run_cli("cancel", "acme-probe", "--api-key", bravo)
    assert res.rc == 4

    # A tenant's key administers nothing and commands no node.
    res = await run_cli("keys", "create", "--tenant", "acme", "--operator", "--api-key", acme)
    assert res.rc == 1 and "needs an operator key" in res.err
    res = await run_cli("drain", "dev-1", "--api-key", bravo)
    assert res.rc == 1 and "needs an operator key" in res.err
    res = await run_cli("nodes", "--json", "--api-key", bravo)
    assert res.rc == 0 and json.loads(res.out)["nodes"][0]["node_id"] == "dev-1"

    # Rotation with no grace: the old key stops at once, the new one works; then revoke it.
    res = await run_cli("keys", "rotate", acme_id, "--grace", "0", "--json", "--api-key", op)
    assert res.rc == 0, res
    rotated = json.loads(res.out)
    assert rotated["info"]["rotated_from"] == acme_id
    res = await run_cli("jobs", "--api-key", acme)
    assert res.rc == 1 and "Flotilla-Api-Key" in res.err
    assert (await run_cli("jobs", "--api-key", rotated["key"])).rc == 0
    new_id = rotated["info"]["key_id"]
    res = await run_cli("keys", "revoke", new_id, "--api-key", op)
    assert res.rc == 0 and "revoked" in res.out
    assert (await run_cli("jobs", "--api-key", rotated["key"])).rc == 1
    res = await run_cli("keys", "revoke", "k_000000000000", "--api-key", op)
    assert res.rc == 4
    res = await run_cli("keys", "rotate", "not-a-key-id", "--api-key", op)
    assert res.rc == 2 and "key_id" in res.err
