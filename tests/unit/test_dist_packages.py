"""`make dist` refuses a wheelhouse where another distribution writes into one of Flotilla's
import packages: python-daemon installs `daemon/` too, and pip lets two distributions in one
venv overwrite each other's files."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _dist() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flotilla_tools_dist", REPO / "tools/dist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _wheel(path: Path, *files: str) -> Path:
    with zipfile.ZipFile(path, "w") as whl:
        for name in files:
            whl.writestr(name, "")
    return path


def test_the_packages_checked_are_the_ones_the_wheel_holds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(_dist().IMPORT_PACKAGES)


def test_a_wheel_writing_into_our_daemon_package_is_named(tmp_path: Path) -> None:
    dist = _dist()
    ours = _wheel(tmp_path / "flotilla_fleet-0.1.0-py3-none-any.whl", "daemon/__init__.py")
    wheels = [
        ours,
        _wheel(tmp_path / "nats_py-2.16.0-py3-none-any.whl", "nats/__init__.py"),
        _wheel(
            tmp_path / "python_daemon-3.1.2-py3-none-any.whl",
            "daemon/__init__.py",
            "daemon/runner.py",
            "python_daemon-3.1.2.dist-info/RECORD",
        ),
    ]
    assert dist.foreign_writers(ours, wheels) == ["python_daemon-3.1.2-py3-none-any.whl: daemon/"]
    assert dist.foreign_writers(ours, wheels[:2]) == []
