"""The unit tier runs without servers: a test here that asks for one fails at setup."""

from __future__ import annotations

import pytest

SERVER_FIXTURES = frozenset(
    {"nats_server", "nats_url", "nc", "pg_server", "pg_template", "database_url", "ffmpeg_tools",
     "clip", "clip_small", "media_dir", "open_tmp_path"}
)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_servers(request: pytest.FixtureRequest) -> None:
    wanted = SERVER_FIXTURES.intersection(request.fixturenames)
    assert not wanted, f"a unit test may not use servers or media: {sorted(wanted)}"
