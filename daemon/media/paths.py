"""Job URIs to local paths confined to the configured roots, refused before any process starts.

Only `file://` URIs are accepted here (`file:///srv/media/a.mp4`, `file://localhost/...`); a bare
path is refused so that a producer always says which storage it means. `http(s)://` inputs and
`nats-obj://` inputs and outputs need I/O (a download into scratch, an upload after success), so
operations go through daemon.media.access (`open_input` / `output_path`), which fetches remote
media and calls these functions for `file://`; any other scheme is refused by both.

Checks, in order: scheme, no query/fragment (an unencoded `#` or `?` would silently cut the name),
strict percent-decoding, no NUL, absolute, no `..` segment (after decoding, so `%2e%2e` is caught),
then symlinks are resolved and the *resolved* path must lie under a resolved root. The resolved
path is what ffmpeg gets, so a link swapped after the check cannot redirect an existing component
it already followed (a root writable by strangers remains out of scope).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from daemon.errors import PathRefused


def resolve_input(uri: str, roots: Sequence[Path]) -> Path:
    """The local file a job reads; it need not exist yet (ffmpeg reports a missing file)."""
    match _scheme(uri):
        case "file":
            return _confine(_file_path(uri), roots, uri)
        case other:
            raise PathRefused(f"input scheme {other!r} is not supported (use file://)")


def resolve_output(uri: str, roots: Sequence[Path]) -> Path:
    """The local file a job writes; its parent may not exist yet (outputs create it)."""
    match _scheme(uri):
        case "file":
            path = _confine(_file_path(uri), roots, uri)
        case other:
            raise PathRefused(f"output scheme {other!r} is not supported (use file://)")
    if uri.endswith("/") or path.is_dir():
        raise PathRefused(f"output {uri!r} names a directory, not a file")
    return path


def ffmpeg_arg(path: Path) -> str:
    """The argv form of a resolved path.

    Always absolute, so a name like `-i` or `-y` can never be read as an option (it becomes
    `/srv/media/-y`); the `file:` prefix pins the protocol, so a name containing `:` (say
    `concat:a|b` or `subfile,,...`) is a file name, never a protocol, and it matches the
    `-protocol_whitelist file` every file input runs under.
    """
    if not path.is_absolute():
        raise PathRefused(f"{path} is not absolute")
    return f"file:{path}"


def uri_of(path: Path) -> str:
    """The `file://` URI of a local path (reported in output events), percent-encoded."""
    return path.as_uri()


def _scheme(uri: str) -> str:
    if "\x00" in uri:
        raise PathRefused("URI contains a NUL byte")
    scheme = urlsplit(uri).scheme.lower()
    if not scheme:
        raise PathRefused(f"{uri[:200]!r} is not a URI: write file:///absolute/path")
    return scheme


def _file_path(uri: str) -> PurePosixPath:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise PathRefused(f"file URI host {parts.netloc!r} is not this node")
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise PathRefused("file URI must not carry '?' or '#': percent-encode them (%3F, %23)")
    try:
        decoded = unquote(parts.path, errors="strict")
    except UnicodeDecodeError as exc:
        raise PathRefused("file URI is not valid UTF-8 after percent-decoding") from exc
    if "\x00" in decoded:
        raise PathRefused("path contains a NUL byte")
    path = PurePosixPath(decoded)
    if not path.is_absolute():
        raise PathRefused(f"path {decoded[:200]!r} is not absolute")
    if ".." in path.parts:
        raise PathRefused(f"path {decoded[:200]!r} contains '..'")
    return path


def _confine(path: PurePosixPath, roots: Sequence[Path], uri: str) -> Path:
    # realpath resolves every existing component (symlinks included) and keeps the rest as is:
    # for an output that is "the nearest existing parent, resolved".
    resolved = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if resolved == real_root:
            break
        if resolved.is_relative_to(real_root):
            return resolved
    raise PathRefused(f"{uri[:200]!r} resolves outside the allowed roots ({_named(roots)})")


def _named(roots: Sequence[Path], limit: int = 240) -> str:
    """The roots a path may lie under, for the refusal: the producer learns where to put it."""
    if not roots:
        return "none are configured"
    shown = ", ".join(str(r) for r in roots)
    return "allowed: " + (shown if len(shown) <= limit else shown[:limit] + " …")
