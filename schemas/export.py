"""Export one JSON Schema file per wire type, so producers in any language can validate."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from schemas.registry import WIRE_TYPES

SCHEMA_DIR = Path(__file__).with_name("json")


def render_all() -> dict[str, str]:
    """File name -> JSON text, deterministic so a test can compare with the committed files."""
    out: dict[str, str] = {}
    for name, tp in WIRE_TYPES.items():
        schema = msgspec.json.schema(tp)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = name
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_all().items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written
