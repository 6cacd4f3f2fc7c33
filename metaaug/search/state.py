"""The search state: everything a search needs to resume, written atomically after every scored rung."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaug.errors import MetaaugError
from metaaug.files import read_json
from metaaug.ownership import verify_file
from metaaug.publish import write_json

KIND = "metatrain.checkpoint"


@dataclass
class SearchState:
    """The framework's and the racing engine's state; `own` is the method's own (its registered dataclass)."""

    method: str
    own: Any = None
    rung: int = 0
    generation: int = 0
    candidates: list[list[float]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)  # per candidate, per task scored so far
    rung_tasks: list[int] = field(default_factory=list)  # tasks per rung of the bracket under way
    confirm: dict | None = None  # the bracket's confirmation under way: who, on which fresh tasks, their scores
    confirm_used: int = 0  # confirmation tasks used so far in this search (never reused)
    history: list[dict] = field(default_factory=list)  # one entry per rung: the curve MLflow shows
    best: list[float] | None = None
    # the evidence behind the answer: the chosen policy first (with the decision), then every candidate
    # of the last bracket with its paired difference to the chosen one (95 % t-interval) and status
    finalists: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)  # one summary per round / generation
    trainings: int = 0
    seconds: float = 0.0
    spent: float = 0.0  # trainings in units of one downstream training (metaaug.search.budget)
    done: str = ""  # why the search stopped

    def to_dict(self) -> dict:
        """The state as JSON-ready data (the method's own part as a mapping)."""
        doc = dict(self.__dict__)
        doc["own"] = dataclasses.asdict(self.own) if dataclasses.is_dataclass(self.own) else self.own
        return doc

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict(), kind=KIND)  # its sidecar holds its SHA-256: verified on resume

    @classmethod
    def load(cls, path: Path, own: type) -> "SearchState":
        """A saved search (its `own` part as the method's dataclass `own`); a damaged checkpoint stops with
        one line saying how to restart."""
        expected = "a checkpoint metaaug wrote (delete it to restart the search)"
        verify_file(path, KIND, expected)  # an edited one would publish a policy its evidence contradicts
        doc = read_json(path, expected)
        try:
            state = cls(**doc)
            state.own = own(**(state.own or {}))
            return state
        except TypeError:
            raise MetaaugError(f"{path}: does not hold a search state; expected {expected}") from None
