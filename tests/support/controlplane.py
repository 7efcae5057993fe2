"""The control-plane configuration tests start from: one cpu pool, metrics on a free port."""

from __future__ import annotations

from typing import Any

from common.natsconn import NatsSettings
from control.config import ControlConfig
from control.topology import TopologySettings


def control_config(nats_url: str, prefix: str, database_url: str, **over: Any) -> ControlConfig:
    """`over` sets any other field (or replaces these)."""
    fields: dict[str, Any] = {"topology": TopologySettings(pools=["cpu"]), "metrics_port": 0}
    fields.update(over)
    return ControlConfig(
        nats=NatsSettings(url=nats_url, prefix=prefix), database_url=database_url, **fields
    )
