"""Job URIs to confined local paths: what is accepted, and every trick that must be refused."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon.errors import InvalidJob, PathRefused
from daemon.job.partials import remove_stale_partials
from daemon.media.paths import ffmpeg_arg, resolve_input, resolve_output, uri_of
from daemon.ops.outputs import NAME_MAX, job_key, partial_path, stale_partials
from schemas.jobs import JobSpec
from schemas.operations import PerTitle, PerTitleRung


@pytest.fixture
def root(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mp4").write_bytes(b"x")
    return media


def test_file_uris_resolve_inside_the_root(root: Path) -> None:
    assert resolve_input(f"file://{root}/a.mp4", [root]) == root / "a.mp4"
    assert resolve_input(f"file://localhost{root}/a.mp4", [root]) == root / "a.mp4"
    assert resolve_input(f"file://{root}/sub/./b%20c.mp4", [root]) == root / "sub" / "b c.mp4"
    assert resolve_output(f"file://{root}/new/dir/out.mp4", [root]) == root / "new/dir/out.mp4"


def test_a_second_root_is_honoured(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_input(f"file://{other}/x.mkv", [root, other]) == other / "x.mkv"


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.invalid/a.mp4",
        "https://example.invalid/a.mp4",
        "concat:{root}/a.mp4|{root}/a.mp4",
        "subfile,,start,0,end,10,,:{root}/a.mp4",
        "nats-obj://bucket/key",
        "data:text/plain,hello",
        "pipe:0",
    ],
)
def test_other_schemes_are_refused(root: Path, uri: str) -> None:
    with pytest.raises(PathRefused, match=r"not supported|not a URI"):
        resolve_input(uri.format(root=root), [root])
    with pytest.raises(PathRefused):
        resolve_output(uri.format(root=root), [root])


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("{root}/a.mp4", "not a URI"),
        ("a.mp4", "not a URI"),
        ("file:a.mp4", "not absolute"),
        ("file://{root}/../etc/passwd", r"'\.\.'"),
        ("file://{root}/%2e%2e/%2e%2e/etc/passwd", r"'\.\.'"),
        ("file://{root}/%2E%2E/x", r"'\.\.'"),
        ("file:///etc/passwd", "outside the allowed roots"),
        ("file://{root}2/a.mp4", "outside the allowed roots"),
        ("file://{root}", "outside the allowed roots"),
        ("file://{root}/a%00.mp4", "NUL"),
        ("file://{root}/a.mp4\x00", "NUL"),
        ("file://{root}/a.mp4?x=1", "percent-encode"),
        ("file://{root}/a.mp4#frag", "percent-encode"),
        ("file://{root}/%ff.mp4", "UTF-8"),
        ("file://otherhost{root}/a.mp4", "not this node"),
    ],
)
def test_trick_paths_are_refused(root: Path, uri: str, needle: str) -> None:
    with pytest.raises(PathRefused, match=needle) as info:
        resolve_input(uri.format(root=root), [root])
    assert isinstance(info.value, InvalidJob) and info.value.kind == "permanent"


def test_symlinks_out_of_the_root_are_refused(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (root / "link.mp4").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    (root / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(PathRefused, match="outside"):
        resolve_input(f"file://{root}/link.mp4", [root])
    with pytest.raises(PathRefused, match="outside"):
        resolve_output(f"file://{root}/dirlink/new/out.mp4", [root])
    with pytest.raises(PathRefused, match="outside"):
        resolve_output(f"file://{root}/dangling.mp4", [root])


def test_symlinks_inside_the_root_resolve_to_their_target(root: Path) -> None:
    (root / "alias.mp4").symlink_to(root / "a.mp4")
    assert resolve_input(f"file://{root}/alias.mp4", [root]) == root / "a.mp4"


def test_a_symlinked_root_is_resolved_too(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root)
    assert resolve_input(f"file://{link}/a.mp4", [link]) == root / "a.mp4"


def test_output_must_name_a_file(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(PathRefused, match="directory"):
        resolve_output(f"file://{root}/d", [root])
    with pytest.raises(PathRefused, match="directory"):
        resolve_output(f"file://{root}/new/", [root])


def test_option_like_and_odd_names_stay_file_arguments(root: Path) -> None:
    odd = root / "-y 'q\"uo\nte' $(x);.mp4"
    assert resolve_input(uri_of(odd), [root]) == odd
    arg = ffmpeg_arg(odd)
    assert arg.startswith(f"file:{root}/-y") and not arg.startswith("-")
    with pytest.raises(PathRefused):
        ffmpeg_arg(Path("relative.mp4"))


def test_partial_names_are_hidden_per_attempt_and_bounded(root: Path) -> None:
    final = root / "out.mp4"
    key = job_key("acme", "job-1")
    assert partial_path(final, key, 2) == root / ".out.mp4.acme.job-1.2.partial"
    long_final = root / (("é" * 120) + ".mp4")
    longest = job_key("t" * 128, "j" * 128)
    assert len(partial_path(long_final, longest, 20).name.encode()) <= NAME_MAX
    for attempt in (1, 2):
        partial_path(final, key, attempt).write_bytes(b"p")
    partial_path(final, job_key("acme", "job-2"), 1).write_bytes(b"p")
    assert [p.name for p in stale_partials(final, key)] == [
        ".out.mp4.acme.job-1.1.partial",
        ".out.mp4.acme.job-1.2.partial",
    ]
    assert os.path.exists(partial_path(final, job_key("acme", "job-2"), 1))


def test_two_tenants_same_job_id_keep_their_own_partials(root: Path) -> None:
    final = root / "shared.mp4"
    for tenant in ("a", "b", "a-b"):
        partial_path(final, job_key(tenant, "j"), 1).write_bytes(b"p")
    # A tenant's cleanup takes its own partials, never another tenant's of the same job id.
    assert [p.name for p in stale_partials(final, job_key("a", "j"))] == [
        ".shared.mp4.a.j.1.partial"
    ]
    keys = {job_key(t * 128, "j" * 128) for t in "ab"} | {job_key("a", "b-c"), job_key("a-b", "c")}
    assert len(keys) == 4


async def test_a_crashed_ladder_directory_is_removed(tmp_path: Path) -> None:
    """A per-title ladder (or package) writes a directory partial: recovery removes it whole,
    and leaves another job's alone."""
    spec = JobSpec(job_id="j", input=(tmp_path / "in.mp4").as_uri(),
                   output=(tmp_path / "ladder").as_uri(),
                   operation=PerTitle(rungs=[PerTitleRung(height=180)]))  # fmt: skip
    mine = partial_path(tmp_path / "ladder", job_key("default", "j"), 2)
    other = partial_path(tmp_path / "ladder", job_key("default", "k"), 1)
    for d in (mine, other):
        await asyncio.to_thread((d / "stream_0").mkdir, parents=True)
        await asyncio.to_thread((d / "180p.mp4").write_bytes, b"x")
    assert await remove_stale_partials(spec, [str(tmp_path)]) == 1
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert left == [other.name]
