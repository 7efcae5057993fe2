"""VAAPI/QSV render nodes under /dev/dri and the kernel driver behind each one."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

DEV_DRI = Path("/dev/dri")
SYS_DRM = Path("/sys/class/drm")

#: Which encoder families a render node's kernel driver can carry. Intel (i915, xe) has both
#: QSV and VAAPI; AMD has VAAPI. NVIDIA's DRM node has no VAAPI encoder (NVENC goes through
#: CUDA), so it suggests nothing. The test encode decides in the end either way.
DRIVER_FAMILIES: dict[str, frozenset[str]] = {
    "i915": frozenset({"qsv", "vaapi"}),
    "xe": frozenset({"qsv", "vaapi"}),
    "amdgpu": frozenset({"vaapi"}),
    "radeon": frozenset({"vaapi"}),
    "nvidia": frozenset(),
}
#: Driver unknown (no sysfs link, e.g. in a container): let the test encodes decide.
UNKNOWN_DRIVER_FAMILIES = frozenset({"qsv", "vaapi"})
#: A named driver we do not know (virtio_gpu, ...) may still have a Mesa VAAPI encoder.
OTHER_DRIVER_FAMILIES = frozenset({"vaapi"})


@dataclass(frozen=True)
class RenderNode:
    path: str
    driver: str | None

    @property
    def families(self) -> frozenset[str]:
        if self.driver is None:
            return UNKNOWN_DRIVER_FAMILIES
        return DRIVER_FAMILIES.get(self.driver, OTHER_DRIVER_FAMILIES)


def _driver(sys_drm: Path, name: str) -> str | None:
    try:
        return os.path.basename(os.readlink(sys_drm / name / "device" / "driver"))
    except OSError:
        return None


def _scan(dev_dri: Path, sys_drm: Path) -> list[RenderNode]:
    try:
        found = [p.name for p in dev_dri.iterdir() if p.name.startswith("renderD")]
    except OSError:  # no /dev/dri at all: a headless or CPU-only box
        return []
    names = sorted(found, key=lambda name: (len(name), name))  # renderD99 < renderD128
    return [RenderNode(str(dev_dri / name), _driver(sys_drm, name)) for name in names]


async def render_nodes(dev_dri: Path = DEV_DRI, sys_drm: Path = SYS_DRM) -> list[RenderNode]:
    """Render nodes in name order (renderD128 first), each with its driver where sysfs says."""
    return await asyncio.to_thread(_scan, dev_dri, sys_drm)


def nodes_for(nodes: list[RenderNode], family: str) -> list[RenderNode]:
    return [node for node in nodes if family in node.families]
