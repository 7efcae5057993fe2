"""The configuration reference, generated from the config structs and their `#:` comments.

msgspec keeps no field docs, so each field's description is the block of `#:` comment lines
right above it in the source (read with `ast`). `python -m control.configdoc` prints the
markdown; `--write README.md` replaces the text between the README markers in place.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
REGENERATE = ".venv/bin/python -m control.configdoc --write README.md"


@dataclass(frozen=True)
class Row:
    path: tuple[str, ...]
    type: str
    default: str
    doc: str


def field_docs(tp: type[msgspec.Struct]) -> dict[str, str]:
    """Field name -> its `#:` comment block, from the class and its Struct bases."""
    docs: dict[str, str] = {}
    for cls in reversed(tp.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)) or cls is msgspec.Struct:
            continue
        lines, _ = inspect.getsourcelines(cls)
        body = ast.parse(textwrap.dedent("".join(lines))).body[0]
        assert isinstance(body, ast.ClassDef)
        for node in body.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                docs[node.target.id] = _comment_above(lines, node.lineno - 1)
    return docs


def _comment_above(lines: list[str], index: int) -> str:
    block: list[str] = []
    i = index - 1
    while i >= 0 and lines[i].strip().startswith("#:"):
        block.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(block)


def _type(t: mi.Type) -> str:
    match t:
        case mi.BoolType():
            return "bool"
        case mi.IntType() | mi.FloatType():
            name = "int" if isinstance(t, mi.IntType) else "float"
            lo = f"> {t.gt}" if t.gt is not None else f"≥ {t.ge}" if t.ge is not None else ""
            hi = f"< {t.lt}" if t.lt is not None else f"≤ {t.le}" if t.le is not None else ""
            bounds = ", ".join(b for b in (lo, hi) if b)
            return f"{name} ({bounds})" if bounds else name
        case mi.StrType():
            return f"string `{t.pattern}`" if t.pattern else "string"
        case mi.ListType():
            return f"list of {_type(t.item_type)}"
        case mi.DictType():
            return f"table of {_type(t.key_type)} → {_type(t.value_type)}"
        case mi.LiteralType():
            return " | ".join(f"`{json.dumps(v)}`" for v in t.values)
        case mi.UnionType():
            parts = [_type(x) for x in t.types if not isinstance(x, mi.NoneType)]
            return " or ".join(parts) + (" (optional)" if t.includes_none else "")
        case mi.StructType():
            return "table"
    return type(t).__name__.removesuffix("Type").lower()


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _default(f: mi.Field) -> str:
    if f.default is None:
        return "unset"
    if f.default is not msgspec.NODEFAULT:
        return f"`{_toml(f.default)}`"
    factory = f.default_factory
    if factory is msgspec.NODEFAULT:
        return "required"
    if getattr(factory, "__name__", "") != "<lambda>" and not isinstance(factory, type):
        return "computed"  # e.g. the host name: the description says how
    return f"`{_toml(msgspec.to_builtins(factory()))}`"


def rows(tp: type[msgspec.Struct], prefix: tuple[str, ...] = ()) -> Iterator[Row]:
    """Every key of `tp`; nested structs contribute a header row and then their own keys."""
    info = mi.type_info(tp)
    assert isinstance(info, mi.StructType)
    docs = field_docs(tp)
    for f in info.fields:
        path = (*prefix, f.encode_name)
        doc = docs.get(f.name, "")
        if isinstance(f.type, mi.StructType):
            yield Row(path, "table", "", doc)
            yield from rows(f.type.cls, path)
        else:
            yield Row(path, _type(f.type), _default(f), doc)


def missing_docs(tp: type[msgspec.Struct]) -> list[str]:
    return [".".join(r.path) for r in rows(tp) if not r.doc]


def table(tp: type[msgspec.Struct], env_prefix: str) -> str:
    out = ["| key | type | default | environment | description |", "|---|---|---|---|---|"]
    for r in rows(tp):
        key = ".".join(r.path)
        if r.type == "table":
            out.append(f"| **`[{key}]`** | table | | | {_cell(r.doc)} |")
            continue
        env = env_prefix + "__".join(r.path).upper()
        cells = (f"`{key}`", r.type, r.default, f"`{env}`", r.doc)
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    from control.config import ENV_PREFIX as CONTROL_ENV
    from control.config import ControlConfig
    from daemon.config import ENV_PREFIX as DAEMON_ENV
    from daemon.config import DaemonConfig

    return "\n".join(
        [
            f"<!-- generated by `{REGENERATE}`; do not edit by hand -->",
            "",
            "### Daemon: `/etc/flotilla/daemon.toml`",
            "",
            table(DaemonConfig, DAEMON_ENV),
            "",
            "### Control plane: `/etc/flotilla/control.toml`",
            "",
            table(ControlConfig, CONTROL_ENV),
        ]
    )


def readme_section(text: str) -> str | None:
    """What the README holds between the markers (stripped), or None when a marker is missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START) : end].strip()


def write(path: Path) -> None:
    text = path.read_text()
    if readme_section(text) is None:
        raise SystemExit(f"{path}: markers {START} / {END} not found")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{render()}\n{END}{tail}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        write(Path(argv[1]))
        return 0
    if argv:
        print("usage: python -m control.configdoc [--write README.md]", file=sys.stderr)
        return 2
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
