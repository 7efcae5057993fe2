"""Per-GPU NVML queries: identity, NVENC/NVDEC engines and load. Blocking; run in a worker thread.

Every NVML call is guarded on its own: NotSupported, NoPermission, GPU-lost and a binding that
lacks the function all become a note on the GPU, never an exception.
"""

from __future__ import annotations

from typing import Any

from schemas.nodes import GpuInfo, GpuLoad

#: NVML's encoder capacity query per codec (NVML has no per-codec decoder query).
ENCODER_QUERIES = (
    ("h264", "NVML_ENCODER_QUERY_H264"),
    ("hevc", "NVML_ENCODER_QUERY_HEVC"),
    ("av1", "NVML_ENCODER_QUERY_AV1"),
)
#: Largest MIG GPU-instance profile first: the first the GPU knows spans the whole GPU, and its
#: encoder/decoder counts are the chip's NVENC/NVDEC engines (an H100 or H200 says 0 NVENC).
MIG_PROFILES = tuple(f"NVML_GPU_INSTANCE_PROFILE_{n}_SLICE" for n in (7, 4, 3, 2, 1))


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Guard:
    """Calls NVML functions by name; a failure becomes a note, or is silent once known unsupported.

    `skip` remembers calls the GPU answered NotSupported, so heartbeats do not repeat them.
    """

    def __init__(self, nv: Any, skip: set[str] | None = None) -> None:
        self.nv = nv
        self.notes: list[str] = []
        self.skip = skip if skip is not None else set()

    def __call__(self, what: str, function: str, *args: Any) -> Any:
        if what in self.skip:
            return None
        fn = getattr(self.nv, function, None)
        if fn is None:
            self.notes.append(f"{what}: {function} is not in this nvidia-ml-py")
            self.skip.add(what)
            return None
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError_* subclasses, and ctypes errors from old drivers
            if isinstance(exc, getattr(self.nv, "NVMLError_NotSupported", ())):
                self.skip.add(what)
            self.notes.append(f"{what}: {describe(exc)}")
            return None


def _percent(value: Any) -> float | None:
    return None if value is None else min(100.0, max(0.0, float(value)))


def device_load(g: Guard, index: int, handle: Any) -> GpuLoad:
    util = g("utilization", "nvmlDeviceGetUtilizationRates", handle)
    enc = g("encoder utilization", "nvmlDeviceGetEncoderUtilization", handle)
    dec = g("decoder utilization", "nvmlDeviceGetDecoderUtilization", handle)
    mem = g("memory", "nvmlDeviceGetMemoryInfo", handle)
    temp = g("temperature", "nvmlDeviceGetTemperature", handle, g.nv.NVML_TEMPERATURE_GPU)
    return GpuLoad(
        index=index,
        utilization_percent=_percent(util.gpu) if util is not None else None,
        encoder_utilization_percent=_percent(enc[0]) if enc is not None else None,
        decoder_utilization_percent=_percent(dec[0]) if dec is not None else None,
        memory_used_bytes=int(mem.used) if mem is not None else None,
        temperature_c=float(temp) if temp is not None else None,
    )


def mig_engines(g: Guard, handle: Any) -> tuple[int, int] | None:
    """(NVENC, NVDEC) engine counts from the whole-GPU MIG profile; None on GPUs without MIG."""
    if g("MIG mode", "nvmlDeviceGetMigMode", handle) is None:
        return None
    quiet = Guard(g.nv)  # smaller profiles are expected to fail on some GPUs: one note at most
    for profile in MIG_PROFILES:
        if hasattr(g.nv, profile):
            info = quiet(
                profile, "nvmlDeviceGetGpuInstanceProfileInfo", handle, getattr(g.nv, profile)
            )
            if info is not None:
                return int(info.encoderCount), int(info.decoderCount)
    g.notes.append(f"engine counts: {quiet.notes[0] if quiet.notes else 'no MIG profile known'}")
    return None


def encoder_codecs(g: Guard, handle: Any) -> list[str]:
    """Codecs whose NVENC capacity NVML reports above 0 (0 or NotSupported: no engine, or busy)."""
    codecs = []
    for codec, query in ENCODER_QUERIES:
        if hasattr(g.nv, query):
            what = f"encoder capacity {codec}"
            if g(what, "nvmlDeviceGetEncoderCapacity", handle, getattr(g.nv, query)):
                codecs.append(codec)
    return codecs


def device_info(nv: Any, index: int, handle: Any, driver: str) -> GpuInfo:
    g = Guard(nv)
    name = g("name", "nvmlDeviceGetName", handle)
    uuid = g("uuid", "nvmlDeviceGetUUID", handle)
    memory = g("memory", "nvmlDeviceGetMemoryInfo", handle)
    codecs = encoder_codecs(g, handle)
    stats = g("encoder sessions", "nvmlDeviceGetEncoderStats", handle)
    sessions = int(stats[0]) if stats is not None else 0
    engines = mig_engines(g, handle)
    load = device_load(g, index, handle)
    if engines is not None:
        nvenc, nvdec = engines[0] > 0, engines[1] > 0
        g.notes.append(f"engines: {engines[0]} NVENC, {engines[1]} NVDEC (whole-GPU MIG profile)")
        source = "the whole-GPU MIG profile counts 0 NVENC engines"
    else:
        # Capacity 0 with sessions running is a busy encoder, not a missing one.
        nvenc = bool(codecs) or sessions > 0
        nvdec = load.decoder_utilization_percent is not None
        source = "NVML reports no encoder capacity for any codec"
    if not nvenc:
        g.notes.append(f"no NVENC engine: {source}")
    return GpuInfo(
        index=index,
        name=str(name) if name is not None else "unknown",
        uuid=str(uuid) if uuid is not None else "",
        memory_total_bytes=int(memory.total) if memory is not None else 0,
        driver_version=driver,
        nvenc=nvenc,
        nvdec=nvdec,
        # NVML has no session-limit query (GeForce limits are enforced inside the driver).
        encoder_session_limit=None,
        encoder_codecs=codecs if nvenc else [],
        utilization_percent=load.utilization_percent,
        encoder_utilization_percent=load.encoder_utilization_percent,
        temperature_c=load.temperature_c,
        notes=list(dict.fromkeys(g.notes)),
    )
