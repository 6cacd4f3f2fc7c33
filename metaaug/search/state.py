"""The search state: everything a search needs to resume, written atomically after every scored rung."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metaaug.errors import MetaaugError
from metaaug.files import read_json
from metaaug.ownership import verify_file
from metaaug.publish import write_json

KIND = "metatrain.checkpoint"


@dataclass
class SearchState:
    """Everything a search needs to resume: written after every scored rung."""

    method: str
    rung: int = 0
    generation: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    candidates: list[list[float]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)  # per candidate, per task scored so far
    history: list[dict] = field(default_factory=list)  # one entry per rung: the curve MLflow shows
    best: list[float] | None = None
    # the evidence behind the answer: the chosen policy first, then every reference and the last explorers,
    # each with its paired difference to the chosen one (95 % t-interval), tasks, baseline name and status
    finalists: list[dict] = field(default_factory=list)
    trainings: int = 0
    seconds: float = 0.0
    spent: float = 0.0  # trainings in units of one downstream training (metaaug.search.budget)
    rung_tasks: list[int] = field(default_factory=list)  # tasks per rung of the bracket under way
    # race: the answer so far (theta, its scores on tasks 0.., label, baseline), the policies already raced
    # (never raced twice), one summary per round, and whether refinement has stopped (and why)
    incumbent: dict | None = None
    tried: list[str] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    done: str = ""

    def save(self, path: Path) -> None:
        write_json(path, self.__dict__, kind=KIND)  # its sidecar holds its SHA-256: verified on resume


    @classmethod
    def load(cls, path: Path) -> "SearchState":
        """A saved search; a damaged checkpoint stops with one line saying how to restart."""
        expected = "a checkpoint metaaug wrote (delete it to restart the search)"
        verify_file(path, KIND, expected)  # an edited one would publish a policy its evidence contradicts
        doc = read_json(path, expected)
        try:
            return cls(**doc)
        except TypeError:
            raise MetaaugError(f"{path}: does not hold a search state; expected {expected}") from None

