"""What the runner did and when: fault episodes, in wall-clock time (the events' own clock)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Episode:
    phase: str
    target: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class StormCount:
    """The malformed-message storm: what the broker stored and what it refused at publish."""

    published: int = 0
    stored: int = 0
    refused: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    stored_by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class Ledger:
    episodes: list[Episode] = field(default_factory=list)
    storm: StormCount = field(default_factory=StormCount)

    def of(self, phase: str) -> list[Episode]:
        return [e for e in self.episodes if e.phase == phase]
