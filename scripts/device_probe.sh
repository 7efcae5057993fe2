#!/usr/bin/env bash
# Run the node probe on a GPU box (e.g. an H200) that has only python3 (3.11+) and this repo.
# The caller puts msgspec, psutil, nvidia-ml-py (and optionally imageio-ffmpeg) on PYTHONPATH,
# e.g. wheels unpacked into one directory. Prints nvidia-smi's view, then the probe's JSON
# (ffmpeg's long encoder/filter lists trimmed); the full JSON goes to $OUT/probe.json when set.
set -u
cd "$(dirname "$0")/.."
echo "== nvidia-smi -L"
nvidia-smi -L || echo "(nvidia-smi failed with status $?)"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,mig.mode.current --format=csv || true
echo "== flotilla probe"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec python3 - <<'PY'
import asyncio, os, shutil, sys, tempfile
import msgspec
from daemon.config import DaemonConfig
from daemon.probe import Nvml, probe_node
from schemas.codec import encode
try:
    import imageio_ffmpeg
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
except Exception:
    ffmpeg = shutil.which("ffmpeg") or sys.exit("no ffmpeg: no imageio-ffmpeg and none on PATH")
async def main() -> None:
    nvml = await Nvml.open()
    cfg = DaemonConfig(node_id="device-probe", state_dir=tempfile.mkdtemp())
    try:
        caps = await probe_node(cfg, ffmpeg, "device-probe", nvml=nvml)
        loads = await nvml.loads()
    finally:
        await nvml.close()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "probe.json"), "wb") as f:
            f.write(encode(caps))
    hw = [n for n in caps.ffmpeg.encoders if n.endswith(("_nvenc", "_qsv", "_vaapi"))]
    short = msgspec.structs.replace(caps.ffmpeg, encoders=hw, filters=[])
    print(msgspec.json.format(encode(msgspec.structs.replace(caps, ffmpeg=short))).decode())
    print("loads:", msgspec.json.encode(loads).decode())
asyncio.run(main())
PY
