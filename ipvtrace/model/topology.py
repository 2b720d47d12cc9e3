"""The node as the model sees it: devices, namespaces and ipvlan ports from
one or more snapshots, with the lookups the classifier makes per packet.

Pure data: snapshot.py reads netlink and produces the snapshots this merges;
nothing here touches the kernel, so the model (classify, evidence) depends
on this module and never on the reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def resolve_links(devices: list[dict], known: list[dict] | dict) -> None:
    """Name the namespace behind each `link_nsid`, from the devices alone: an
    ipvlan slave shares its parent's MAC and names its ifindex; a veth and
    its peer name each other's ifindex. No netlink call per pair of
    namespaces (a node with hundreds of pods would make N² of them); a link
    that matches no device, or several, keeps link_netns None."""
    pool = list(known.values()) if isinstance(known, dict) else list(known)
    by_index: dict[int, list[dict]] = {}
    for d in pool + devices:
        by_index.setdefault(d["ifindex"], []).append(d)
    for dev in devices:
        if "link_nsid" not in dev:
            continue
        nsid = dev.pop("link_nsid")
        cands = [d for d in by_index.get(dev.get("link"), ()) if d["netns"] != dev["netns"]]
        if dev.get("kind") == "ipvlan":
            # the parent: same MAC, and never an ipvlan slave itself (the
            # kernel puts a slave of a slave on the first one's parent)
            cands = [d for d in cands if d.get("mac") == dev.get("mac") and d.get("kind") != "ipvlan"]
        else:
            cands = [d for d in cands if d.get("link") == dev["ifindex"]] or cands
        netns = {d["netns"] for d in cands}
        dev["link_netns"] = netns.pop() if len(netns) == 1 else None
        if dev["link_netns"] is None:
            dev["link_nsid"] = nsid   # kept: a later snapshot may know the peer


@dataclass
class Topology:
    """Lookups over one or more snapshots (later ones win). Every lookup is a
    dict access: nothing scans all devices per packet."""

    ns_names: dict[int, str] = field(default_factory=dict)
    # netns -> {"pod": ..., "container": ...}: what runs there (capture/containers.py)
    ns_labels: dict[int, dict] = field(default_factory=dict)
    devices: dict[tuple[int, int], dict] = field(default_factory=dict)
    # (parent netns, parent ifindex) -> the port's ipvlan {mode, flags}, from its slaves
    ports: dict[tuple[int, int], dict] = field(default_factory=dict)
    # dev_ref's answers until the next snapshot: a run names a few devices, each thousands of times
    _refs: dict[tuple[int, int, str], dict] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_snapshots(cls, snaps: list[dict]) -> "Topology":
        t = cls()
        for snap in snaps:
            t.add(snap)
        return t

    def add(self, snap: dict) -> None:
        """Merge a later snapshot in place (a long run keeps one merged view,
        not every snapshot it took). A pod's namespace may be read before
        its parent's (devices appear in any order): links left unresolved are
        tied again once the devices they point at are known."""
        self._refs.clear()
        for ns in snap.get("namespaces", []):
            self.ns_names[ns["inum"]] = ns.get("name") or ("root" if ns.get("root") else f"netns:{ns['inum']}")
            who = ns.get("who")
            if isinstance(who, dict):
                labels = {k: who[k] for k in ("pod", "container") if isinstance(who.get(k), str)}
                if labels:
                    self.ns_labels[ns["inum"]] = labels
        new = snap.get("devices", [])
        for d in new:
            self.devices[(d["netns"], d["ifindex"])] = dict(d)
        pending = [d for d in self.devices.values() if "link_nsid" in d]
        if pending and new:
            resolve_links(pending, self.devices)
        for d in (self.devices[(x["netns"], x["ifindex"])] for x in new):
            self._port(d)
        for d in pending:
            self._port(d)

    def _port(self, d: dict) -> None:
        if d.get("ipvlan") and d.get("link") is not None and d.get("link_netns") is not None:
            self.ports[(d["link_netns"], d["link"])] = d["ipvlan"]

    def ns_name(self, inum: int) -> str:
        return self.ns_names.get(inum, f"netns:{inum}" if inum else "?")

    def dev_ref(self, netns: int, ifindex: int, name: str) -> dict:
        """A device as rows show it: its name, its namespace's name, and the
        pod and container running there when a runtime's records say so.
        One dict per device until the next snapshot, shared by every row
        that names it: read it, never change it."""
        ref = self._refs.get((netns, ifindex, name))
        if ref is None:
            ref = {"dev": name, "netns": self.ns_name(netns), "ifindex": ifindex}
            labels = self.ns_labels.get(netns)
            if labels:
                ref.update(labels)
            if len(self._refs) >= 4096:   # a stranger's file may name any number
                self._refs.clear()
            self._refs[(netns, ifindex, name)] = ref
        return ref

    def device(self, netns: int, ifindex: int) -> dict | None:
        return self.devices.get((netns, ifindex))

    def port_of(self, netns: int, ifindex: int) -> dict | None:
        """ipvlan mode/flags for a slave, or for a parent (from any of its slaves)."""
        d = self.devices.get((netns, ifindex))
        if d and d.get("ipvlan"):
            return d["ipvlan"]
        return self.ports.get((netns, ifindex))

    def is_ipvlan(self, netns: int, ifindex: int) -> bool:
        d = self.device(netns, ifindex)
        return bool(d and d.get("kind") == "ipvlan")
