"""Slots per pool from measured capacity, and the pools a node serves; pure functions.

- cpu: one slot per `threads_per_job` logical cores, at least one.
- nvenc: per GPU with an NVENC engine (and, where encoders were tested per GPU, one that passed
  there), min(encoder sessions, GPU memory // memory per job). The session cap is configured or
  probed (daemon.probe.sessions: NVML has no query for it); a GPU whose cap is unknown counts
  `DEFAULT_NVENC_SESSIONS`. Each session is one encoder: a ladder of N rungs takes N
  (daemon.ops.devices counts them per GPU).
- qsv / vaapi: `DEFAULT_RENDER_NODE_SLOTS` per render node whose driver carries the family.
A pool whose encoders passed their test encode always gets at least one slot (the test proved one
session works even where NVML could not say more). `cfg.slots` overrides any measured value; a
pool overridden to 0 is not served.

A custom pool (any other name in `cfg.pools`, e.g. `batch`) belongs to a capability class, `cpu`
unless `cfg.pool_classes` names another: it is served when that class is, and measured like it.
Its slots are its own (as every pool's are), so a node serving `cpu` and `batch` runs both at once;
give `slots` overrides where that would overcommit the cores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from schemas.nodes import GpuInfo

POOLS = ("cpu", "nvenc", "qsv", "vaapi")
#: Sessions per NVENC GPU when NVML cannot say: current GeForce drivers allow 8 at once.
DEFAULT_NVENC_SESSIONS = 8
#: Concurrent encodes per Intel/AMD render node: one media engine is saturated by about four
#: 1080p encodes; more only queue inside the driver.
DEFAULT_RENDER_NODE_SLOTS = 4
MIB = 1024 * 1024


def cpu_slots(logical_cores: int, threads_per_job: int) -> int:
    return max(1, logical_cores // max(1, threads_per_job))


def gpu_slots(gpu: GpuInfo, gpu_memory_per_job_mb: int, *, tested: bool = False) -> int:
    """NVENC sessions GPU `gpu` takes; `tested`: encoders were verified per GPU, so a GPU on
    which none passed takes none (an H200 beside an L4, a GPU whose driver failed)."""
    if not gpu.nvenc or (tested and not gpu.verified_encoders):
        return 0
    sessions = gpu.encoder_session_limit or DEFAULT_NVENC_SESSIONS
    return min(sessions, gpu.memory_total_bytes // (gpu_memory_per_job_mb * MIB))


def nvenc_slots(gpus: Sequence[GpuInfo], gpu_memory_per_job_mb: int) -> int:
    tested = any(gpu.verified_encoders for gpu in gpus)
    return sum(gpu_slots(gpu, gpu_memory_per_job_mb, tested=tested) for gpu in gpus)


def pool_class(pool: str, classes: Mapping[str, str] = {}) -> str:
    """The capability class a pool's jobs need: the pool itself for the built-in ones."""
    return pool if pool in POOLS else classes.get(pool, "cpu")


def pools_served(
    verified: Iterable[str],
    wanted: Sequence[str] = (),
    classes: Mapping[str, str] = {},
) -> list[str]:
    """cpu when libx264 works; a hardware pool when any of its encoders works; then `wanted`
    (built-in pools in their order, then custom pools whose class is served, in config order)."""
    names = set(verified)
    have = {"cpu"} if "libx264" in names else set()
    have |= {pool for pool in POOLS[1:] if any(n.endswith(f"_{pool}") for n in names)}
    ordered = [pool for pool in POOLS if pool in have]
    if not wanted:
        return ordered
    custom = [p for p in wanted if p not in POOLS and pool_class(p, classes) in have]
    return [pool for pool in ordered if pool in wanted] + list(dict.fromkeys(custom))


def measured_slots(
    pool: str,
    *,
    logical_cores: int,
    threads_per_job: int,
    gpus: Sequence[GpuInfo],
    gpu_memory_per_job_mb: int,
    render_nodes: Mapping[str, int],
    classes: Mapping[str, str] = {},
) -> int:
    pool = pool_class(pool, classes)
    if pool == "cpu":
        return cpu_slots(logical_cores, threads_per_job)
    if pool == "nvenc":
        return max(1, nvenc_slots(gpus, gpu_memory_per_job_mb))
    return max(1, DEFAULT_RENDER_NODE_SLOTS * render_nodes.get(pool, 0))


def plan_slots(
    pools: Sequence[str],
    overrides: Mapping[str, int],
    *,
    logical_cores: int,
    threads_per_job: int,
    gpus: Sequence[GpuInfo],
    gpu_memory_per_job_mb: int,
    render_nodes: Mapping[str, int],
    classes: Mapping[str, str] = {},
) -> dict[str, int]:
    """Slots for each served pool (overrides first); pools left with 0 slots are omitted."""
    slots = {
        pool: overrides[pool]
        if pool in overrides
        else measured_slots(
            pool,
            logical_cores=logical_cores,
            threads_per_job=threads_per_job,
            gpus=gpus,
            gpu_memory_per_job_mb=gpu_memory_per_job_mb,
            render_nodes=render_nodes,
            classes=classes,
        )
        for pool in pools
    }
    return {pool: n for pool, n in slots.items() if n > 0}


def served_capacity(
    wanted: Sequence[str],
    probed: Mapping[str, int],
    overrides: Mapping[str, int],
    classes: Mapping[str, str] = {},
) -> dict[str, int]:
    """Slots per pool to serve, at start or on reload: the override, else the probe's figure,
    else (a custom pool named since the probe) the figure of a probed pool of its class; a pool
    of a class the probe did not size needs an override or a restart. Pools at 0 are omitted."""
    out: dict[str, int] = {}
    for pool in wanted:
        cls = pool_class(pool, classes)
        same = (n for p, n in probed.items() if pool_class(p, classes) == cls)
        fallback = 0 if pool in POOLS else max(same, default=0)
        n = overrides.get(pool, probed.get(pool, fallback))
        if n > 0:
            out[pool] = n
    return out
