"""`flotilla sim`'s scenario overrides reach the simulator processes' configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli.main import build_parser
from control.sim.cli import scenario_from
from control.sim.runner import plan_processes
from control.sim.scenario import Death, Scenario


def test_nodes_nice_reaches_every_simulator_process(tmp_path: Path) -> None:
    args = build_parser().parse_args(["sim", "--nodes", "6", "--nodes-nice", "10"])
    s = scenario_from(args)
    assert isinstance(s, Scenario) and s.nodes == 6 and s.nodes_nice == 10
    s = Scenario(nodes=6, deaths=[Death(at_s=1.0, nodes=2)], nodes_nice=10, processes=2)
    nodes = plan_processes(s, tmp_path, tmp_path / "state", "nats://127.0.0.1:1", "p")
    confs = [json.loads(p.config.read_text()) for p in nodes.procs]
    # The death's own process too: a node killed and restarted runs at the same niceness.
    assert len(confs) == 3 and {c["nice"] for c in confs} == {10}
    assert sorted(n for c in confs for n in c["nodes"]) == [f"sim-{i:05d}" for i in range(1, 7)]


def test_nodes_nice_defaults_to_competing_and_is_bounded() -> None:
    args = build_parser().parse_args(["sim"])
    s = scenario_from(args)
    assert isinstance(s, Scenario) and s.nodes_nice == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sim", "--nodes-nice", "20"])


def test_the_nodes_heartbeat_fits_the_scenarios_offline_threshold(tmp_path: Path) -> None:
    """The daemon's default heartbeat (10 s) would read every node offline between two beats
    under a short `node_offline_after`: the simulator's nodes beat three times within it."""
    s = Scenario(nodes=2, node_offline_after=6.0, processes=1)
    nodes = plan_processes(s, tmp_path, tmp_path / "state", "nats://127.0.0.1:1", "p")
    conf = json.loads(nodes.procs[0].config.read_text())
    assert conf["daemon"]["heartbeat_interval"] == 2.0
    # The fleet's threshold (30 s) keeps the daemon's own default.
    assert Scenario(node_offline_after=30.0).daemon_settings()["heartbeat_interval"] == 10.0
    # A scenario's own setting wins, and one that cannot keep nodes online is refused.
    given = Scenario(node_offline_after=30.0, daemon={"heartbeat_interval": 5.0, "x": 1})
    assert given.daemon_settings() == {"heartbeat_interval": 5.0, "x": 1}
    with pytest.raises(ValueError, match="keep two heartbeats inside node_offline_after"):
        Scenario(node_offline_after=8.0, daemon={"heartbeat_interval": 5.0}).daemon_settings()
