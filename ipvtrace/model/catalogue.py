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
    not_observed: str = ""   # why no real-kernel test shows it (empty: shown on 6.1 and 6.12)
    leaves_node: bool = False  # the frame leaves the node by the parent (ipvtrace merge)


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


def markdown() -> str:
    """docs/branches.md, generated: the catalogue and what no kernel run shows."""
    cat = load()
    out = ["# ipvlan branches", "",
           "Generated from `ipvtrace/model/branches.toml` by `ipvtrace branches --markdown`;",
           "a test keeps this page equal to that output.", "",
           "| id | mode | dir | what happens | evidence ipvtrace uses |", "|---|---|---|---|---|"]
    for b in cat.branches.values():
        out.append(f"| `{b.id}` | {b.mode} | {b.direction} | {b.what} | {b.evidence} |")
    out += ["", "## Delivery", "", "| delivery | meaning |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in cat.delivery.items()]
    out += ["", "## Branches no real-kernel test shows",
            "",
            "Every other branch is produced and classified on Debian 6.1 and 6.12 by the",
            "in-guest suite, and replayed from the kept recordings by",
            "`tests/test_branch_coverage.py`.", "",
            "| id | why no kernel run here shows it |", "|---|---|"]
    out += [f"| `{b.id}` | {b.not_observed} |" for b in cat.branches.values() if b.not_observed]
    out += ["| delivery `slave_down` | `ipvlan_stop` removes a downed slave's addresses, so the "
            "lookup misses and the packet takes `tx.l2.to_parent` / `tx.l3.routed`: only a "
            "race reaches it |", ""]
    return "\n".join(out) + "\n"
