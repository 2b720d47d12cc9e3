"""The branch catalogue (branches.toml), loaded once, shared by every stage."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PATH = Path(__file__).resolve().parent / "branches.toml"


@dataclass(frozen=True)
class Branch:
    id: str
    direction: str
    mode: str
    what: str
    evidence: str
    classified: bool


@dataclass(frozen=True)
class Catalogue:
    branches: dict[str, Branch]
    delivery: dict[str, str]

    def check(self, branch_id: str) -> str:
        """Return *branch_id* if it is in the catalogue; a typo is a bug."""
        if branch_id not in self.branches:
            raise KeyError(f"branch {branch_id!r} is not in {PATH.name}")
        return branch_id

    def check_delivery(self, delivery: str | None) -> str | None:
        if delivery is not None and delivery not in self.delivery:
            raise KeyError(f"delivery {delivery!r} is not in {PATH.name}")
        return delivery


@lru_cache(maxsize=1)
def load() -> Catalogue:
    data = tomllib.loads(PATH.read_text())
    branches = {b["id"]: Branch(**b) for b in data["branch"]}
    return Catalogue(branches=branches, delivery=dict(data["delivery"]))
