"""The first video track's coded size and duration from an MP4/MOV file's header boxes.

A guess for an operation that would otherwise wait on the probe before it can build its command
(the sprite sheet: daemon.ops.thumbnail); the probe still runs and decides. Plain box walking
with bounded reads, no decoding: a file that is not MP4/MOV, or whose boxes are not where they
should be, gives None. Blocking (file reads): call it in a thread.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

#: Top-level boxes looked at before giving up (ftyp, free, mdat, moov, ... in any order).
MAX_TOP_BOXES = 32
#: A bigger moov (hours of media with small samples) is not read for a guess.
MAX_MOOV_BYTES = 16 << 20
_CONTAINERS = {b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass(frozen=True, slots=True)
class Mp4Head:
    width: int
    height: int
    #: The track's duration (its edit, where it has one), and the movie's (the longest track).
    track_duration_s: float
    movie_duration_s: float


def read_mp4_head(path: Path) -> Mp4Head | None:
    try:
        with open(path, "rb") as f:
            moov = _find_moov(f.fileno())
    except OSError:
        return None
    if moov is None:
        return None
    try:
        return _from_moov(moov)
    except (struct.error, ValueError, ZeroDivisionError):
        return None


def _find_moov(fd: int) -> bytes | None:
    total, pos = os.fstat(fd).st_size, 0
    for _ in range(MAX_TOP_BOXES):
        head = os.pread(fd, 16, pos)
        if len(head) < 8:
            return None
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:
            if len(head) < 16:
                return None
            (size,) = struct.unpack(">Q", head[8:16])
            header = 16
        elif size == 0:  # the last box runs to the end of the file
            size = total - pos
        if size < header or pos + size > total:
            return None
        if kind == b"moov":
            if size > MAX_MOOV_BYTES:
                return None
            body = os.pread(fd, size - header, pos + header)
            return body if len(body) == size - header else None
        pos += size
    return None


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each box in `data`; ValueError when one runs past the end."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            raise ValueError("box runs past its parent")
        out.append((kind, data[pos + header : pos + size]))
        pos += size
    return out


def _child(data: bytes, path: list[bytes]) -> bytes | None:
    for kind, body in _boxes(data):
        if kind == path[0]:
            return body if len(path) == 1 else _child(body, path[1:])
    return None


def _from_moov(moov: bytes) -> Mp4Head | None:
    mvhd = _child(moov, [b"mvhd"])
    if mvhd is None:
        return None
    movie_scale, movie_duration = _scale_and_duration(mvhd)
    for kind, trak in _boxes(moov):
        if kind != b"trak":
            continue
        hdlr = _child(trak, [b"mdia", b"hdlr"])
        if hdlr is None or hdlr[8:12] != b"vide":
            continue
        mdhd = _child(trak, [b"mdia", b"mdhd"])
        stsd = _child(trak, [b"mdia", b"minf", b"stbl", b"stsd"])
        if mdhd is None or stsd is None or len(stsd) < 8 + 36:
            return None
        width, height = struct.unpack_from(">HH", stsd, 8 + 32)  # the first sample entry
        scale, duration = _scale_and_duration(mdhd)
        track_s = duration / scale
        edit = _single_edit(trak)
        if edit is not None:
            track_s = edit / movie_scale
        if not (width and height and track_s > 0):
            return None
        return Mp4Head(width, height, track_s, movie_duration / movie_scale)
    return None


def _scale_and_duration(box: bytes) -> tuple[int, int]:
    """mvhd/mdhd: (timescale, duration) in version 0 or 1 layout."""
    if box[0] == 1:
        scale, duration = struct.unpack_from(">IQ", box, 20)
    else:
        scale, duration = struct.unpack_from(">II", box, 12)
    if not scale:
        raise ValueError("zero timescale")
    return scale, duration


def _single_edit(trak: bytes) -> int | None:
    """The one edit's segment duration (movie timescale); None without an edit list. Several
    edits (an empty lead-in, cuts) are beyond a guess: ValueError."""
    elst = _child(trak, [b"edts", b"elst"])
    if elst is None:
        return None
    version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
    if count != 1:
        raise ValueError("several edits")
    if version == 1:
        return int(struct.unpack_from(">Q", elst, 8)[0])
    return int(struct.unpack_from(">I", elst, 8)[0])
