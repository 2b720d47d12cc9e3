"""The seed article's topologies, as data: namespaces, how to build them, traffic.

A veth pair stands for the article's ens10 and the outside world: the parent
lives in a namespace playing the node ("host"), its peer in one playing the
network outside. Nothing is created outside the namespaces listed here.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .netlab import Lab, LabError


@dataclass
class Step:
    ns: str
    dst: str
    label: str
    count: int = 2
    reachable: bool | None = None    # what the run saw


@dataclass
class Scenario:
    name: str
    title: str
    namespaces: list[str]
    build: Callable[[Lab], None]
    steps: list[Step] = field(default_factory=list)


# --- article section "Ipvlan2": L2, two namespaces on one parent ---------
L2_HOST, L2_OUT, L2_NS1, L2_NS2 = "ipvt-l2host", "ipvt-l2out", "ipvt-node1ns", "ipvt-node1ns2"


def build_l2(lab: Lab) -> None:
    lab.veth(L2_HOST, "ens10", L2_OUT, "ext0")
    for ns, ip in ((L2_NS1, "192.168.100.101/24"), (L2_NS2, "192.168.100.102/24")):
        lab.ipvlan(L2_HOST, "ens10", "ipvl_10_1", "l2", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    # method 1 of the article: the gateway address on the parent itself
    lab.addr(L2_HOST, "ens10", "192.168.100.1/24")
    lab.addr(L2_OUT, "ext0", "192.168.100.254/24")
    # dst MAC == src MAC for an address no slave owns: pin the neighbour so
    # the frame takes ipvlan's to-parent path without waiting for ARP
    mac = lab.mac(L2_HOST, "ens10")
    lab.neigh(L2_NS1, "eth0", "192.168.100.1", mac)


L2 = Scenario(
    name="article-l2",
    title="L2: two namespaces on one parent; the outside and the parent's own address",
    namespaces=[L2_HOST, L2_OUT, L2_NS1, L2_NS2],
    build=build_l2,
    steps=[
        Step(L2_NS1, "192.168.100.102", "node1ns -> node1ns2 (same parent, L2)"),
        Step(L2_OUT, "192.168.100.101", "outside -> node1ns (through the parent)"),
        Step(L2_OUT, "192.168.100.1", "outside -> the parent's own address"),
        Step(L2_NS1, "192.168.100.1", "node1ns -> the parent's address (method 1)", count=1),
    ],
)

# --- article section "Ipvlan3": L3, two namespaces in different subnets -----
L3_HOST, L3_OUT, L3_NS1, L3_NS2 = "ipvt-l3host", "ipvt-l3out", "ipvt-node2ns", "ipvt-node2ns2"


def build_l3(lab: Lab) -> None:
    lab.veth(L3_HOST, "ens10", L3_OUT, "ext0")
    for ns, ip in ((L3_NS1, "192.168.100.201/24"), (L3_NS2, "192.168.200.201/24")):
        lab.ipvlan(L3_HOST, "ens10", "ipvl_10_1", "l3", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
        lab.route(ns, "default", dev="eth0")
    # section 6: the parent is addressed, the outside routes back to the pods
    lab.addr(L3_HOST, "ens10", "172.18.22.1/24")
    lab.addr(L3_OUT, "ext0", "172.18.22.254/24")
    lab.route(L3_OUT, "192.168.100.0/24", via="172.18.22.1")
    lab.route(L3_OUT, "192.168.200.0/24", via="172.18.22.1")


L3 = Scenario(
    name="article-l3",
    title="L3: two namespaces in different subnets, default dev eth0; and the outside",
    namespaces=[L3_HOST, L3_OUT, L3_NS1, L3_NS2],
    build=build_l3,
    steps=[
        Step(L3_NS1, "192.168.200.201", "node2ns -> node2ns2 (L3, other subnet)"),
        Step(L3_NS1, "172.18.22.254", "node2ns -> outside (routed by the parent's netns)"),
    ],
)

SCENARIOS = {s.name: s for s in (L2, L3)}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"ipvtrace record exited early (rc {proc.returncode}): {err.strip()}")
        if time.monotonic() > end:
            raise LabError(f"ipvtrace record not ready after {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def recorder(output: Path, ready_timeout: float = 600) -> Iterator[None]:
    """`ipvtrace record -o OUTPUT` around the body: started and attached before
    it, stopped with SIGINT (a complete file) after it, whatever happens."""
    ready = output.with_name(output.name + ".ready")
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipvtrace", "record", "-o", str(output), "--ready-file", str(ready)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(ready, proc, ready_timeout)
        yield
        time.sleep(1.0)   # let the multicast worker and softirqs finish
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        sys.stderr.write(err)
        if proc.returncode != 0:
            raise LabError(f"ipvtrace record failed (rc {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        ready.unlink(missing_ok=True)


def record_scenarios(names: list[str], output: Path, ready_timeout: float = 600) -> list[Scenario]:
    """Build the scenarios, record their traffic with `ipvtrace record`, tear them down."""
    chosen = [SCENARIOS[n] for n in names]
    with Lab(namespaces=[ns for s in chosen for ns in s.namespaces]) as lab:
        for s in chosen:
            s.build(lab)
        with recorder(output, ready_timeout):
            for s in chosen:
                for step in s.steps:
                    step.reachable = lab.ping(step.ns, step.dst, step.count)
                    print(f"  {'ok  ' if step.reachable else 'FAIL'} {step.label}: ping {step.dst}",
                          file=sys.stderr, flush=True)
    return chosen


def guest_ready() -> None:
    """Load the modules the scenarios need (in a fresh VM nothing is loaded)."""
    for mod in ("ipvlan", "veth"):
        subprocess.run(["modprobe", mod], check=False)
    if os.geteuid() != 0:
        raise LabError("the scenarios need root")
