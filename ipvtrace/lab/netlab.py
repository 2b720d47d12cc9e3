"""Build ipvlan topologies in namespaces made for the purpose, and remove them.

Everything is created with pyroute2 inside network namespaces that this module
makes itself (never the caller's own namespace), is recorded as it is made,
and is removed in reverse order on success, failure and Ctrl-C. A name that
is already in use is refused before anything is created.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ipvtrace.capture.snapshot import (IPVLAN_FLAGS, IPVLAN_MODES, NETNS_RUN,
                                       _register_ipvlan_kind, netns_socket)

MODE_NUM = {v: k for k, v in IPVLAN_MODES.items()}

_interrupted = False


def _note_signal(signum, frame) -> None:
    global _interrupted
    _interrupted = True


@contextlib.contextmanager
def interruptible():
    """Ctrl-C/SIGTERM become a flag that checkpoint() turns into KeyboardInterrupt
    between netlink calls: raised inside pyroute2, it could be swallowed there
    and the lab would carry on."""
    global _interrupted
    _interrupted = False
    old = {s: signal.signal(s, _note_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def checkpoint() -> None:
    if _interrupted:
        raise KeyboardInterrupt
FLAG_NUM = {v: k for k, v in IPVLAN_FLAGS.items()}


class LabError(RuntimeError):
    """A lab could not be built; the message says why."""


@dataclass
class Lab:
    """A set of namespaces and the devices inside them; a context manager."""

    namespaces: list[str] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    def __enter__(self) -> "Lab":
        _register_ipvlan_kind()
        from pyroute2 import config, netns

        # pyroute2 gives the child that unshares a namespace 2 s to answer; an
        # emulated guest on a busy host took longer (TimeoutError, 2026-12-03)
        config.default_communicate_timeout = max(config.default_communicate_timeout, 60)

        checkpoint()
        existing = set(netns.listnetns())
        clash = sorted(set(self.namespaces) & existing)
        if clash:
            raise LabError(
                f"network namespace(s) {', '.join(clash)} already exist: another lab is "
                f"running or was killed; remove them with: ip netns del {' '.join(clash)}"
            )
        try:
            for name in self.namespaces:
                checkpoint()
                netns.create(name)
                self._made.append(name)
                self.link_up(name, "lo")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace this lab made (their devices go with them)."""
        from pyroute2 import netns

        while self._made:
            name = self._made.pop()
            try:
                netns.remove(name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def pods(self, host_ns: str, parent: str, names: list[str], mode: str) -> None:
        """Many pods at once, as a node brings them up: a namespace each with
        an ipvlan slave of *parent* named eth0, up (its IPv6 start-up traffic
        goes through ipvlan). One `ip -batch` in the host's namespace (a
        netlink socket per pod would take minutes in an emulated guest); the
        slave is moved, renamed and brought up by one request. Removed with
        the lab, or by remove_pods()."""
        self._made.extend(names)
        self._batch([f"netns add {ns}" for ns in names])
        lines = []
        for i, ns in enumerate(names):
            lines += [f"link add pod{i} link {parent} type ipvlan mode {mode}",
                      f"link set pod{i} netns {ns} name eth0 up"]
        self._batch(lines, host_ns)

    def remove_pods(self, names: list[str]) -> None:
        """Pods going away: their namespaces, and the slaves in them."""
        for ns in names:
            self._made.remove(ns)
        self._batch([f"netns del {ns}" for ns in names])

    def _batch(self, lines: list[str], ns: str | None = None) -> None:
        checkpoint()
        r = subprocess.run(["ip", *(["-n", ns] if ns else []), "-batch", "-"],
                           input="\n".join(lines) + "\n",
                           capture_output=True, text=True, timeout=600)
        checkpoint()
        if r.returncode != 0:
            raise LabError(f"ip -batch: {(r.stderr or r.stdout).strip()[:500]}")

    # -- building blocks -------------------------------------------------
    def ipr(self, ns: str):
        from pyroute2 import IPRoute

        checkpoint()
        if ns not in self._made:
            raise LabError(f"namespace {ns} is not part of this lab")
        # not IPRoute(netns=ns): pyroute2 forks a child for that socket and
        # gives up after 10 s of 2 s tries; in an emulated PREEMPT_RT guest
        # beside a loaded host, with the probes attached, the child did not
        # answer in time (a fresh-clone CI run, 6.1-rt, test_stats' setup)
        return IPRoute(use_socket=netns_socket(str(NETNS_RUN / ns)))

    def index(self, ns: str, dev: str) -> int:
        with self.ipr(ns) as ipr:
            found = ipr.link_lookup(ifname=dev)
        if not found:
            raise LabError(f"no device {dev} in {ns}")
        return found[0]

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        with self.ipr(ns_a) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        self.link_up(ns_a, name_a)
        self.link_up(ns_b, name_b)

    def ipvlan(self, host_ns: str, parent: str, name: str, mode: str, flag: str | None = None,
               into: str | None = None, rename: str | None = None) -> None:
        """`ip link add NAME link PARENT type ipvlan mode MODE [FLAG]`, then move/rename."""
        parent_idx = self.index(host_ns, parent)
        kw = {"ipvlan_mode": MODE_NUM[mode]}
        if flag:
            kw["ipvlan_flags"] = FLAG_NUM[flag]
        with self.ipr(host_ns) as ipr:
            ipr.link("add", ifname=name, kind="ipvlan", link=parent_idx, **kw)
            idx = ipr.link_lookup(ifname=name)[0]
            if into:
                ipr.link("set", index=idx, net_ns_fd=into)
        ns = into or host_ns
        if rename:
            with self.ipr(ns) as ipr:
                idx = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, ifname=rename)
        self.link_up(ns, rename or name)

    def link_up(self, ns: str, dev: str) -> None:
        idx = self.index(ns, dev)
        with self.ipr(ns) as ipr:
            ipr.link("set", index=idx, state="up")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        ip, plen = cidr.split("/")
        idx = self.index(ns, dev)
        with self.ipr(ns) as ipr:
            ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))

    def route(self, ns: str, dst: str, dev: str | None = None, via: str | None = None) -> None:
        kw: dict = {"dst": "0.0.0.0/0" if dst == "default" else dst}
        if dev:
            kw["oif"] = self.index(ns, dev)
        if via:
            kw["gateway"] = via
        else:
            kw["scope"] = 253  # link, as `ip route add ... dev X` does
        with self.ipr(ns) as ipr:
            ipr.route("add", **kw)

    def neigh(self, ns: str, dev: str, ip: str, mac: str) -> None:
        idx = self.index(ns, dev)
        with self.ipr(ns) as ipr:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state="permanent")

    def mac(self, ns: str, dev: str) -> str:
        idx = self.index(ns, dev)
        with self.ipr(ns) as ipr:
            return ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)

    def run(self, ns: str, cmd: list[str], check: bool = False, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        checkpoint()
        if ns not in self._made:
            raise LabError(f"namespace {ns} is not part of this lab")
        r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True,
                           text=True, timeout=timeout)
        checkpoint()   # the command may have ended because of the same Ctrl-C
        if check and r.returncode != 0:
            raise LabError(f"in {ns}: {' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
        return r

    def ping(self, ns: str, dst: str, count: int = 2, size: int | None = None) -> bool:
        """True when at least one reply came back."""
        extra = ["-s", str(size)] if size else []
        r = self.run(ns, ["ping", "-n", "-c", str(count), "-i", "0.3", "-W", "2", *extra, dst],
                     timeout=30 + 3 * count)
        return r.returncode == 0

    def dummy(self, ns: str, name: str) -> None:
        with self.ipr(ns) as ipr:
            ipr.link("add", ifname=name, kind="dummy")
        self.link_up(ns, name)

    def mtu(self, ns: str, dev: str, mtu: int) -> None:
        idx = self.index(ns, dev)
        with self.ipr(ns) as ipr:
            ipr.link("set", index=idx, mtu=mtu)

    def send_raw(self, ns: str, dev: str, frame_hex: str, count: int = 1) -> None:
        """Send Ethernet frames from a packet socket (what ping cannot send)."""
        # ENOBUFS is the driver saying NET_XMIT_DROP: the frame was sent and dropped
        code = ("import socket,errno\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
                f"s.bind(({dev!r},0))\nf=bytes.fromhex({frame_hex!r})\n"
                f"for _ in range({count}):\n"
                " try: s.send(f)\n"
                " except OSError as e:\n"
                "  if e.errno != errno.ENOBUFS: raise\n")
        self.run(ns, [sys.executable, "-c", code], check=True, timeout=120)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("building namespaces needs root: run it with sudo")
    if not Path("/run").is_dir():
        raise LabError("/run is missing: cannot create network namespaces")
