"""Devices, namespaces and ipvlan modes, read with pyroute2 (netlink).

Events carry (netns inode, ifindex); this snapshot turns them into names a
person knows (``eth0@pod-a``) and tells the classifier each port's mode and
flags. The mode is read from netlink, not from struct offsets, which move
between kernels. Taken at the start and again at the end of a recording, so
devices created while tracing are known too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_RUN = Path("/run/netns")
IPVLAN_MODES = {0: "l2", 1: "l3", 2: "l3s"}
IPVLAN_FLAGS = {1: "private", 2: "vepa"}

_registered = False


def _register_ipvlan_kind() -> None:
    """pyroute2 0.9 decodes IFLA_IPVLAN_MODE for L2/L3 only and not the flags."""
    global _registered
    if _registered:
        return
    from pyroute2.netlink import nla
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    class ipvlan_data(nla):
        prefix = "IFLA_"
        nla_map = (
            ("IFLA_IPVLAN_UNSPEC", "none"),
            ("IFLA_IPVLAN_MODE", "uint16"),
            ("IFLA_IPVLAN_FLAGS", "uint16"),
        )

    ifinfmsg.ifinfo.register_link_kind(module={"ipvlan": ipvlan_data})
    _registered = True


def netns_inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def list_namespaces() -> list[dict]:
    """The root netns and every `ip netns` one, as {inum, name, path, root}."""
    out: list[dict] = []
    seen: set[int] = set()
    # init_net: pid 1's, or (where pid 1 is hidden, as in some sandboxes) the
    # kernel threads' (kthreadd, pid 2), which always live in init_net
    for root in ("/proc/1/ns/net", "/proc/2/ns/net"):
        try:
            ino = netns_inode(root)
        except OSError:
            continue
        out.append({"inum": ino, "name": None, "path": root, "root": True})
        seen.add(ino)
        break
    if NETNS_RUN.is_dir():
        for p in sorted(NETNS_RUN.iterdir()):
            try:
                ino = netns_inode(p)
            except OSError:
                continue
            if ino in seen:
                for ns in out:
                    if ns["inum"] == ino and ns["name"] is None:
                        ns["name"] = p.name
                continue
            seen.add(ino)
            out.append({"inum": ino, "name": p.name, "path": str(p), "root": False})
    # anonymous namespaces (containers, pods without `ip netns` names): named
    # after the first process that holds one, e.g. "pid:4242(pause)"
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            ino = netns_inode(proc / "ns" / "net")
            if ino in seen:
                continue
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        seen.add(ino)
        out.append({"inum": ino, "name": f"pid:{proc.name}({comm})",
                    "path": str(proc / "ns" / "net"), "root": False, "anonymous": True})
    return out


def _open_iproute(ns: dict):
    from pyroute2 import IPRoute

    if ns["root"] and netns_inode("/proc/self/ns/net") == ns["inum"]:
        return IPRoute()
    return IPRoute(netns=ns["path"] if ns.get("anonymous") or not ns["name"] else ns["name"])


def _dump_ns(ns: dict, all_ns: list[dict]) -> list[dict]:
    devices = []
    with _open_iproute(ns) as ipr:
        nsid_to_inum: dict[int, int] = {}
        for other in all_ns:
            if other["inum"] == ns["inum"]:
                continue
            try:
                fd = os.open(other["path"], os.O_RDONLY)
            except OSError:
                continue
            try:
                r = ipr.get_netnsid(fd=fd)
                if r and r.get("nsid") is not None and r["nsid"] >= 0:
                    nsid_to_inum[r["nsid"]] = other["inum"]
            except Exception:
                pass
            finally:
                os.close(fd)
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr():
            addrs.setdefault(a["index"], []).append(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            )
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            dev = {
                "netns": ns["inum"],
                "ifindex": link["index"],
                "name": link.get_attr("IFLA_IFNAME"),
                "kind": kind,
                "mac": link.get_attr("IFLA_ADDRESS"),
                "up": bool(link["flags"] & 1),
                "addrs": addrs.get(link["index"], []),
                "link": link.get_attr("IFLA_LINK"),
                "link_netns": None,
            }
            nsid = link.get_attr("IFLA_LINK_NETNSID")
            if dev["link"] is not None:
                dev["link_netns"] = nsid_to_inum.get(nsid) if nsid is not None else ns["inum"]
            if kind == "ipvlan" and info is not None:
                data = info.get_attr("IFLA_INFO_DATA")
                mode = data.get_attr("IFLA_IPVLAN_MODE") if data else None
                flags = (data.get_attr("IFLA_IPVLAN_FLAGS") if data else 0) or 0
                dev["ipvlan"] = {
                    "mode": IPVLAN_MODES.get(mode, f"mode{mode}"),
                    "flags": [n for bit, n in IPVLAN_FLAGS.items() if flags & bit],
                }
            devices.append(dev)
    return devices


def take() -> dict:
    """A snapshot of every known namespace's devices (errors per netns are kept)."""
    _register_ipvlan_kind()
    namespaces = list_namespaces()
    devices: list[dict] = []
    errors: list[str] = []
    for ns in namespaces:
        try:
            devices.extend(_dump_ns(ns, namespaces))
        except Exception as exc:  # a netns that vanished while we looked
            errors.append(f"{ns['name'] or ns['path']}: {exc}")
    return {
        "ktime_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
        "wall_time": time.time(),
        "namespaces": [{k: v for k, v in ns.items() if k != "path"} for ns in namespaces],
        "devices": devices,
        "errors": errors,
    }


@dataclass
class Topology:
    """Lookups over one or more snapshots (later ones win)."""

    ns_names: dict[int, str] = field(default_factory=dict)
    devices: dict[tuple[int, int], dict] = field(default_factory=dict)

    @classmethod
    def from_snapshots(cls, snaps: list[dict]) -> "Topology":
        t = cls()
        for snap in snaps:
            t.add(snap)
        return t

    def add(self, snap: dict) -> None:
        """Merge a later snapshot in place (a long run keeps one merged view,
        not every snapshot it took)."""
        for ns in snap.get("namespaces", []):
            self.ns_names[ns["inum"]] = ns["name"] or ("root" if ns.get("root") else f"netns:{ns['inum']}")
        for d in snap.get("devices", []):
            self.devices[(d["netns"], d["ifindex"])] = d

    def ns_name(self, inum: int) -> str:
        return self.ns_names.get(inum, f"netns:{inum}" if inum else "?")

    def device(self, netns: int, ifindex: int) -> dict | None:
        return self.devices.get((netns, ifindex))

    def port_of(self, netns: int, ifindex: int) -> dict | None:
        """ipvlan mode/flags for a slave, or for a parent (from any of its slaves)."""
        d = self.device(netns, ifindex)
        if d and d.get("ipvlan"):
            return d["ipvlan"]
        for s in self.devices.values():
            if s.get("ipvlan") and s.get("link") == ifindex and s.get("link_netns") == netns:
                return s["ipvlan"]
        return None

    def is_ipvlan(self, netns: int, ifindex: int) -> bool:
        d = self.device(netns, ifindex)
        return bool(d and d.get("kind") == "ipvlan")
