"""Row filters shared by live, record's summary and replay: --netns, --dev,
--branch GLOB, --mode, --pod GLOB, --container GLOB. Applied after
classification, so a filtered view is the same rows the unfiltered one
shows, fewer of them."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

KEYS = ("netns", "dev", "branch", "mode", "pod", "container")


@dataclass(frozen=True)
class RowFilter:
    netns: tuple[str, ...] = ()
    dev: tuple[str, ...] = ()
    branch: tuple[str, ...] = ()
    mode: tuple[str, ...] = ()
    pod: tuple[str, ...] = ()
    container: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args) -> "RowFilter":
        return cls(*(tuple(getattr(args, k, None) or ()) for k in KEYS))

    def to_json(self) -> dict:
        return {k: list(getattr(self, k)) for k in KEYS}

    @classmethod
    def from_json(cls, d: dict | None) -> "RowFilter":
        """The filters `record` was given and kept in its header (replay applies them)."""
        d = d or {}
        return cls(*(tuple(d.get(k, ())) for k in KEYS))

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in KEYS)

    def matches(self, row: dict) -> bool:
        ends = [r for r in (row.get("from"), row.get("to")) if r]
        ends += [m["to"] for m in row.get("mcast", []) if m.get("to")]
        if self.netns and not any(e.get("netns") in self.netns for e in ends):
            return False
        if self.dev and not any(e.get("dev") in self.dev for e in ends):
            return False
        for key in ("pod", "container"):
            globs = getattr(self, key)
            if globs and not any(fnmatch.fnmatchcase(e[key], g) for e in ends
                                 if isinstance(e.get(key), str) for g in globs):
                return False
        if self.mode and row.get("mode") not in self.mode:
            return False
        if self.branch:
            ids = [row["branch"], *(m["branch"] for m in row.get("mcast", []))]
            if not any(fnmatch.fnmatchcase(i, g) for i in ids for g in self.branch):
                return False
        return True


def add_arguments(p) -> None:
    g = p.add_argument_group("filters (repeat an option to allow several values)")
    g.add_argument("--netns", action="append", metavar="NAME",
                   help="packets from or to a device in this namespace (ip netns name, 'root', "
                        "or the pod/container name rows show)")
    g.add_argument("--dev", action="append", metavar="NAME", help="packets from or to this device")
    g.add_argument("--branch", action="append", metavar="GLOB",
                   help="branch ids matching GLOB, e.g. 'tx.l3.*' or '*drop*'")
    g.add_argument("--mode", action="append", choices=("l2", "l3", "l3s"), help="port mode")
    g.add_argument("--pod", action="append", metavar="GLOB",
                   help="packets from or to a pod matching GLOB (Kubernetes: 'NAMESPACE/NAME', "
                        "e.g. 'default/web-*'; podman: the pod's name)")
    g.add_argument("--container", action="append", metavar="GLOB",
                   help="packets from or to a container whose name matches GLOB (podman, docker)")
