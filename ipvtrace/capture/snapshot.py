"""Devices, namespaces and ipvlan modes, read with pyroute2 (netlink).

Events carry (netns inode, ifindex); this snapshot turns them into names a
person knows (``eth0@pod-a``) and tells the classifier each port's mode and
flags (merged and looked up by topology.Topology). The mode is read from
netlink, not from struct offsets, which move between kernels. Taken at the
start and again at the end of a recording, so devices created while tracing
are known too.
"""
from __future__ import annotations

import ctypes
import functools
import os
import socket
import threading
import time
from pathlib import Path

from ipvtrace.capture import containers
from ipvtrace.model.topology import resolve_links

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
    # by what runs there when a runtime's records say (containers.py: the
    # pod, or runtime:container), else after the first process that holds
    # one, e.g. "pid:4242(pause)"
    names = containers.Names()
    unnamed: dict[int, dict] = {}   # anonymous namespaces no process has named yet
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            ino = netns_inode(proc / "ns" / "net")
        except OSError:
            continue
        if ino in seen and ino not in unnamed:
            continue
        who = containers.identify(proc.name, names)
        if ino in unnamed:
            if who is not None:
                _name_by(unnamed.pop(ino), who)
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        seen.add(ino)
        ns = {"inum": ino, "name": f"pid:{proc.name}({comm})",
              "path": str(proc / "ns" / "net"), "root": False, "anonymous": True}
        out.append(ns)
        if who is not None:
            _name_by(ns, who)
        else:
            unnamed[ino] = ns
    return out


def _name_by(ns: dict, who: containers.Who) -> None:
    ns["name"] = who.name
    ns["who"] = who.to_json()


CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc for setns(2) (os.setns arrives in Python 3.12), loaded once."""
    return ctypes.CDLL(None, use_errno=True)


def netns_socket(path: str) -> socket.socket:
    """An rtnetlink socket that lives in the namespace at *path*.

    pyroute2's IPRoute(netns=...) forks a child per namespace to make its
    socket (measured: 0.29 s per namespace in an emulated guest, 145 s for a
    node of 500 pods). A socket belongs to the namespace it was made in, and
    setns(CLONE_NEWNET) moves only the calling thread: a short-lived thread
    enters the namespace, makes the socket and ends, so no thread of ours is
    ever left in a namespace it did not start in."""
    out: dict = {}

    def enter_and_open() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        except BaseException as exc:  # handed to the caller's thread
            out["error"] = exc

    t = threading.Thread(target=enter_and_open, name="ipvtrace-netns", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


def _open_iproute(ns: dict):
    from pyroute2 import IPRoute

    if ns["root"] and netns_inode("/proc/self/ns/net") == ns["inum"]:
        return IPRoute()
    path = ns["path"] if ns.get("anonymous") or not ns["name"] else str(NETNS_RUN / ns["name"])
    return IPRoute(use_socket=netns_socket(path))


def _dump_ns(ns: dict) -> list[dict]:
    """Every link of one namespace (one netlink socket, two dumps). A link
    into another namespace keeps its peer's nsid (`link_nsid`) until
    resolve_links() names that namespace."""
    devices = []
    with _open_iproute(ns) as ipr:
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
                if nsid is None:
                    dev["link_netns"] = ns["inum"]
                else:
                    dev["link_nsid"] = nsid
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
    """A snapshot of every namespace's devices (errors per netns are kept)."""
    _register_ipvlan_kind()
    namespaces = list_namespaces()
    devices: list[dict] = []
    errors: list[str] = []
    for ns in namespaces:
        try:
            devices.extend(_dump_ns(ns))
        except Exception as exc:  # a netns that vanished while we looked
            errors.append(f"{ns['name'] or ns['path']}: {exc}")
    resolve_links(devices, [])
    return _snap(namespaces, devices, errors)


def take_netns(inum: int, known: list[dict] | dict) -> dict:
    """A snapshot of one namespace (a pod that appeared while tracing): found
    by its inode among `ip netns` names, then processes; its links resolved
    against the *known* devices (a Topology's `devices`). Costs one
    namespace's netlink dump, not a node's."""
    _register_ipvlan_kind()
    ns = _find_namespace(inum)
    if ns is None:
        return _snap([], [], [f"netns:{inum}: gone before it could be read"])
    try:
        devices = _dump_ns(ns)
    except Exception as exc:
        return _snap([ns], [], [f"{ns['name'] or ns['path']}: {exc}"])
    resolve_links(devices, known)
    return _snap([ns], devices, [])


def _find_namespace(inum: int) -> dict | None:
    if NETNS_RUN.is_dir():
        for p in NETNS_RUN.iterdir():
            try:
                if netns_inode(p) == inum:
                    return {"inum": inum, "name": p.name, "path": str(p), "root": False}
            except OSError:
                continue
    for ns in list_namespaces():
        if ns["inum"] == inum:
            return ns
    return None


def _snap(namespaces: list[dict], devices: list[dict], errors: list[str]) -> dict:
    return {
        "ktime_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
        "wall_time": time.time(),
        "namespaces": [{k: v for k, v in ns.items() if k != "path"} for ns in namespaces],
        "devices": devices,
        "errors": errors,
    }
