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
import tempfile
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ipvtrace.lab.netlab import Lab, LabError, checkpoint


@dataclass
class Step:
    ns: str
    dst: str
    label: str
    count: int = 2
    claim: bool | None = None        # the article's claim: reachable or not (None: no claim)
    pre: Callable[[Lab], None] | None = None   # change made just before this step
    size: int | None = None          # ping payload size
    reachable: bool | None = None    # what the run saw
    window: tuple[int, int] = (0, 0)  # ktime span of its traffic

    @property
    def agrees(self) -> bool | None:
        return None if self.claim is None or self.reachable is None else self.claim == self.reachable


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
    _pods(lab, L2_HOST, "ens10", "l2", [(L2_NS1, "192.168.100.101/24"),
                                        (L2_NS2, "192.168.100.102/24")])
    # method 1 of the article: the gateway address on the parent itself
    lab.addr(L2_HOST, "ens10", "192.168.100.1/24")
    lab.addr(L2_OUT, "ext0", "192.168.100.254/24")
    # dst MAC == src MAC for an address no slave owns: pin the neighbour so
    # the frame takes ipvlan's to-parent path without waiting for ARP
    mac = lab.mac(L2_HOST, "ens10")
    lab.neigh(L2_NS1, "eth0", "192.168.100.1", mac)


L2 = Scenario(
    name="article-l2",
    title="(tests) L2 pods, the outside, the parent's own address, to-parent",
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
    _pods(lab, L3_HOST, "ens10", "l3", [(L3_NS1, "192.168.100.201/24"),
                                        (L3_NS2, "192.168.200.201/24")], default="eth0")
    # section 6: the parent is addressed, the outside routes back to the pods
    lab.addr(L3_HOST, "ens10", "172.18.22.1/24")
    lab.addr(L3_OUT, "ext0", "172.18.22.254/24")
    lab.route(L3_OUT, "192.168.100.0/24", via="172.18.22.1")
    lab.route(L3_OUT, "192.168.200.0/24", via="172.18.22.1")


L3 = Scenario(
    name="article-l3",
    title="(tests) L3 pods in two subnets, and the outside",
    namespaces=[L3_HOST, L3_OUT, L3_NS1, L3_NS2],
    build=build_l3,
    steps=[
        Step(L3_NS1, "192.168.200.201", "node2ns -> node2ns2 (L3, other subnet)"),
        Step(L3_NS1, "172.18.22.254", "node2ns -> outside (routed by the parent's netns)"),
    ],
)


# --- the article, section by section -------------------------------------
# Names: ipvt-<scenario>-<role>. "host" plays the node, with ens10 (the
# business NIC, a veth whose peer "ext0" sits in "net", the outside network
# on ens10's side) and, where the article uses it, ens3 (the node's main NIC,
# a veth to "world"). Claims are the article's; the run shows the kernel's.


def _pods(lab: Lab, host: str, parent: str, mode: str, pods: list[tuple[str, str]],
          default: str | None = None, via: str | None = None, routes: list[str] = ()) -> None:
    for ns, cidr in pods:
        lab.ipvlan(host, parent, "ipvl_10_1", mode, into=ns, rename="eth0")
        lab.addr(ns, "eth0", cidr)
        for r in routes:
            lab.route(ns, r, dev="eth0")
        if via:
            lab.route(ns, "default", via=via)
        elif default:
            lab.route(ns, "default", dev="eth0")


# 1. L2, two namespaces on one parent
def _build_l2_pods(lab: Lab) -> None:
    lab.veth("ipvt-1-host", "ens10", "ipvt-1-net", "ext0")
    _pods(lab, "ipvt-1-host", "ens10", "l2",
          [("ipvt-1-node1ns", "192.168.100.101/24"), ("ipvt-1-node1ns2", "192.168.100.102/24")])


LAB_L2_PODS = Scenario(
    "l2-pods", "1. L2: two namespaces on one parent reach each other",
    ["ipvt-1-host", "ipvt-1-net", "ipvt-1-node1ns", "ipvt-1-node1ns2"], _build_l2_pods,
    [Step("ipvt-1-node1ns", "192.168.100.102", "node1ns -> node1ns2", claim=True),
     Step("ipvt-1-node1ns2", "192.168.100.101", "node1ns2 -> node1ns", claim=True)])


# 2. L2, namespace <-> host, three methods (three nodes side by side)
def _node(lab: Lab, tag: str) -> tuple[str, str]:
    host, net = f"ipvt-2{tag}-host", f"ipvt-2{tag}-net"
    lab.veth(host, "ens10", net, "ext0")
    lab.dummy(host, "ens3")
    return host, net


def _build_l2_host(lab: Lab) -> None:
    # (1) 192.168.100.1/24 on ens10 as the namespaces' gateway; host IP on ens3
    host, _ = _node(lab, "a")
    lab.addr(host, "ens3", "172.18.22.114/24")
    lab.addr(host, "ens10", "192.168.100.1/24")
    _pods(lab, host, "ens10", "l2", [("ipvt-2a-node1ns", "192.168.100.101/24")],
          via="192.168.100.1")
    # (2) host-side ipvl_10 holds 192.168.100.1/32, /32 routes to the namespaces
    host, _ = _node(lab, "b")
    lab.addr(host, "ens3", "172.18.22.114/24")
    _pods(lab, host, "ens10", "l2", [("ipvt-2b-node1ns", "192.168.100.101/24")],
          via="192.168.100.1")
    lab.ipvlan(host, "ens10", "ipvl_10", "l2")
    lab.addr(host, "ipvl_10", "192.168.100.1/32")
    lab.route(host, "192.168.100.101/32", dev="ipvl_10")
    # (3) the host IP itself (/32) on ipvl_10, a route to the host subnet
    #     `dev eth0` in the namespaces, ens10 without an address
    host, _ = _node(lab, "c")
    _pods(lab, host, "ens10", "l2", [("ipvt-2c-node1ns", "192.168.100.101/24")],
          routes=["172.18.22.0/24"])
    lab.ipvlan(host, "ens10", "ipvl_10", "l2")
    lab.addr(host, "ipvl_10", "172.18.22.114/32")
    lab.route(host, "192.168.100.101/32", dev="ipvl_10")


LAB_L2_HOST = Scenario(
    "l2-host", "2. L2: namespace <-> host by the article's three methods",
    [f"ipvt-2{t}-{r}" for t in "abc" for r in ("host", "net", "node1ns")], _build_l2_host,
    [Step("ipvt-2a-node1ns", "172.18.22.114", "method 1: gateway 192.168.100.1 on ens10", claim=True),
     Step("ipvt-2b-node1ns", "172.18.22.114", "method 2: gateway on host-side ipvl_10", claim=True),
     Step("ipvt-2c-node1ns", "172.18.22.114", "method 3: host IP on ipvl_10, route dev eth0",
          claim=True)])


# 3. L2, namespace -> outside
def _build_l2_out(lab: Lab) -> None:
    # methods 1/2: the namespace's gateway is on the host, which routes out of
    # ens3 to the world; the world has no route back: SNAT is needed
    host, world = "ipvt-3a-host", "ipvt-3a-world"
    lab.veth(host, "ens10", "ipvt-3a-net", "ext0")
    lab.veth(host, "ens3", world, "eth0")
    lab.addr(host, "ens3", "172.18.22.114/24")
    lab.addr(world, "eth0", "172.18.22.254/24")
    lab.sysctl(host, "net.ipv4.ip_forward", "1")
    _pods(lab, host, "ens10", "l2", [("ipvt-3a-node1ns", "192.168.100.101/24")],
          via="192.168.100.1")
    lab.ipvlan(host, "ens10", "ipvl_10", "l2")
    lab.addr(host, "ipvl_10", "192.168.100.1/32")
    lab.route(host, "192.168.100.101/32", dev="ipvl_10")
    # method 3: the namespace's next hop is outside the node, on ens10's network
    host, net = "ipvt-3b-host", "ipvt-3b-net"
    lab.veth(host, "ens10", net, "ext0")
    lab.addr(net, "ext0", "192.168.100.254/24")
    _pods(lab, host, "ens10", "l2", [("ipvt-3b-node1ns", "192.168.100.101/24")],
          via="192.168.100.254")


def _snat(lab: Lab) -> None:
    lab.run("ipvt-3a-host", ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s",
                             "192.168.100.0/24", "-o", "ens3", "-j", "SNAT",
                             "--to-source", "172.18.22.114"], check=True)


LAB_L2_OUT = Scenario(
    "l2-outside", "3. L2: namespace -> outside (SNAT for methods 1/2, directly for 3)",
    ["ipvt-3a-host", "ipvt-3a-net", "ipvt-3a-world", "ipvt-3a-node1ns",
     "ipvt-3b-host", "ipvt-3b-net", "ipvt-3b-node1ns"], _build_l2_out,
    [Step("ipvt-3a-node1ns", "172.18.22.254", "methods 1/2, no SNAT: the world cannot answer",
          claim=False),
     Step("ipvt-3a-node1ns", "172.18.22.254", "methods 1/2 with SNAT on the host", claim=True,
          pre=_snat),
     Step("ipvt-3b-node1ns", "192.168.100.254", "method 3: leaves by ens10 directly", claim=True)])


# 4. L3, two namespaces in different subnets (and the article's `mode l2` slip)
def _build_l3_pods(lab: Lab) -> None:
    lab.veth("ipvt-4-host", "ens10", "ipvt-4-net", "ext0")
    _pods(lab, "ipvt-4-host", "ens10", "l3",
          [("ipvt-4-node2ns", "192.168.100.201/24"), ("ipvt-4-node2ns2", "192.168.200.201/24")],
          default="eth0")


LAB_L3_PODS = Scenario(
    "l3-pods", "4. L3: two namespaces in different subnets, `default dev eth0`",
    ["ipvt-4-host", "ipvt-4-net", "ipvt-4-node2ns", "ipvt-4-node2ns2"], _build_l3_pods,
    [Step("ipvt-4-node2ns", "192.168.200.201", "node2ns -> node2ns2", claim=True),
     Step("ipvt-4-node2ns2", "192.168.100.201", "node2ns2 -> node2ns", claim=True)])


def _build_l3_mode_l2(lab: Lab) -> None:
    # exactly as the article types it: the second slave is created `mode l2`,
    # which re-sets the mode of the whole port (both slaves) to L2
    host = "ipvt-4b-host"
    lab.veth(host, "ens10", "ipvt-4b-net", "ext0")
    _pods(lab, host, "ens10", "l3", [("ipvt-4b-node2ns", "192.168.100.201/24")], default="eth0")
    _pods(lab, host, "ens10", "l2", [("ipvt-4b-node2ns2", "192.168.200.201/24")], default="eth0")


LAB_L3_MODE_L2 = Scenario(
    "l3-pods-as-typed", "4b. L3 as the article types it: second slave `mode l2` (port turns L2)",
    ["ipvt-4b-host", "ipvt-4b-net", "ipvt-4b-node2ns", "ipvt-4b-node2ns2"], _build_l3_mode_l2,
    [Step("ipvt-4b-node2ns", "192.168.200.201", "node2ns -> node2ns2", claim=True)])


# 5. L3, namespace <-> host through a host-side L3 ipvl_10
def _build_l3_host(lab: Lab) -> None:
    host = "ipvt-5-host"
    lab.veth(host, "ens10", "ipvt-5-net", "ext0")
    _pods(lab, host, "ens10", "l3",
          [("ipvt-5-node2ns", "192.168.100.201/24"), ("ipvt-5-node2ns2", "192.168.200.201/24")],
          default="eth0")
    lab.ipvlan(host, "ens10", "ipvl_10", "l3")
    lab.addr(host, "ipvl_10", "172.18.22.115/32")
    lab.route(host, "192.168.100.201/32", dev="ipvl_10")
    lab.route(host, "192.168.200.201/32", dev="ipvl_10")


LAB_L3_HOST = Scenario(
    "l3-host", "5. L3: namespace <-> host through a host-side L3 ipvl_10",
    ["ipvt-5-host", "ipvt-5-net", "ipvt-5-node2ns", "ipvt-5-node2ns2"], _build_l3_host,
    [Step("ipvt-5-node2ns", "172.18.22.115", "node2ns -> host 172.18.22.115", claim=True),
     Step("ipvt-5-host", "192.168.200.201", "host -> node2ns2", claim=True)])


# 6. L3, namespace <-> outside: ens10 addressed, the outside routes back
def _build_l3_out(lab: Lab) -> None:
    host, net = "ipvt-6-host", "ipvt-6-net"
    lab.veth(host, "ens10", net, "ext0")
    lab.addr(host, "ens10", "172.18.22.1/24")
    lab.addr(net, "ext0", "172.18.22.254/24")
    _pods(lab, host, "ens10", "l3", [("ipvt-6-node2ns", "192.168.100.201/24")], default="eth0")


LAB_L3_OUT = Scenario(
    "l3-outside", "6. L3: namespace -> outside; the outside needs a route back via ens10",
    ["ipvt-6-host", "ipvt-6-net", "ipvt-6-node2ns"], _build_l3_out,
    [Step("ipvt-6-node2ns", "172.18.22.254", "no route back on the outside", claim=False),
     Step("ipvt-6-node2ns", "172.18.22.254", "outside routes 192.168.100.0/24 via ens10's IP",
          claim=True, pre=lambda lab: lab.route("ipvt-6-net", "192.168.100.0/24",
                                                via="172.18.22.1")),
     Step("ipvt-6-net", "192.168.100.201", "outside -> node2ns", claim=True)])

LAB = [LAB_L2_PODS, LAB_L2_HOST, LAB_L2_OUT, LAB_L3_PODS, LAB_L3_MODE_L2, LAB_L3_HOST, LAB_L3_OUT]
SCENARIOS = {s.name: s for s in (*LAB, L2, L3)}



def wait_for(path: Path, proc: subprocess.Popen, timeout: float, what: str = "record") -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        checkpoint()
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"ipvtrace {what} exited early (rc {proc.returncode}): {err.strip()}")
        if time.monotonic() > end:
            raise LabError(f"ipvtrace {what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


class Traced:
    """What a traced ipvtrace command left: its stdout once it has ended."""

    stdout: str = ""


@contextlib.contextmanager
def traced(args: list[str], ready: Path, ready_timeout: float = 600,
           settle: float = 1.0) -> Iterator[Traced]:
    """`ipvtrace ARGS --ready-file READY` around the body: attached before it,
    stopped with SIGINT after it (and *settle* seconds for the multicast worker
    and softirqs to finish), whatever happens. Its output goes to files, not
    pipes: a pipe nobody reads while the body runs fills (`stats --json`
    writes a reading twice a second) and blocks the tracer."""
    ready.unlink(missing_ok=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipvtrace", *args, "--ready-file", str(ready)],
            stdout=out, stderr=err, text=True,
        )
        result = Traced()
        try:
            try:
                wait_for(ready, proc, ready_timeout, args[0])
            except LabError as exc:
                err.seek(0)
                raise LabError(f"{exc} {err.read().strip()[-2000:]}") from None
            yield result
            time.sleep(settle)
            checkpoint()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
            err.seek(0)
            sys.stderr.write(err.read())
            out.seek(0)
            result.stdout = out.read()
            if proc.returncode != 0:
                raise LabError(f"ipvtrace {args[0]} failed (rc {proc.returncode})")
        finally:
            interrupt(proc, 120)
            ready.unlink(missing_ok=True)


def interrupt(proc: subprocess.Popen, timeout: float) -> None:
    """Stop a tool that is still running the way a user does, with SIGINT (it
    detaches its probes and finishes its file), and kill it only if it has not
    ended after *timeout* s: a run that failed leaves nothing attached."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@contextlib.contextmanager
def recorder(output: Path, ready_timeout: float = 600, settle: float = 1.0) -> Iterator[None]:
    """`ipvtrace record -o OUTPUT` around the body (a complete file after it)."""
    with traced(["record", "-o", str(output)], output.with_name(output.name + ".ready"),
                ready_timeout, settle):
        yield


def record_scenarios(names: list[str], output: Path, ready_timeout: float = 600) -> list[Scenario]:
    """Build the scenarios, record their traffic with `ipvtrace record`, tear them down."""
    chosen = [SCENARIOS[n] for n in names]
    with Lab(namespaces=[ns for s in chosen for ns in s.namespaces]) as lab:
        for s in chosen:
            try:
                s.build(lab)
            except (OSError, subprocess.CalledProcessError) as exc:  # NetlinkError is an OSError
                raise LabError(f"building {s.name} failed: {exc}") from None
        with recorder(output, ready_timeout):
            for s in chosen:
                for step in s.steps:
                    run_step(lab, step)
    return chosen


def run_step(lab: Lab, step: Step) -> None:
    if step.pre is not None:
        step.pre(lab)
    start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    step.reachable = lab.ping(step.ns, step.dst, step.count, size=step.size)
    step.window = (start, time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    print(f"  {'ok  ' if step.reachable else 'FAIL'} {step.label}: ping {step.dst}",
          file=sys.stderr, flush=True)


def guest_ready() -> None:
    """Load the modules the scenarios need (in a fresh VM nothing is loaded)."""
    for mod in ("ipvlan", "veth", "dummy"):
        subprocess.run(["modprobe", mod], check=False)
    if os.geteuid() != 0:
        raise LabError("the scenarios need root")
