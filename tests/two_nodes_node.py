"""One node of the two-node test (tests/test_two_nodes.py), run inside a guest.

Two guests are joined by a virtual wire (QEMU socket networking: their eth0s).
Each is a node: its wire-facing NIC moved into a host namespace (`ipvt-host`,
the node's own stack) with an ipvlan port on it and two pods. For each mode
(L2: pods on the wire's subnet; L3: a subnet per node, routed by the host
namespaces) both nodes record with `ipvtrace record` while node a's pods talk
to node b's (ICMP, ICMPv6 in L2, UDP, TCP), b's pods ping a's, and one UDP
flow is dropped on a's wire by a tc filter (after ipvlan handed the frame to
the parent). The nodes meet at barriers over the wire before and after the
traffic, so both record all of it. Node a writes what it sent (flows.json);
the host merges the recordings and checks each packet's story.

    python tests/two_nodes_node.py a|b OUT_DIR
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipvtrace.lab.netlab import Lab, LabError  # noqa: E402
from ipvtrace.lab.scenarios import recorder  # noqa: E402

NODE_IP = {"a": "10.99.0.1", "b": "10.99.0.2"}
PEER = {"a": "b", "b": "a"}
# pods per mode: (namespace, IPv4 address/prefix, IPv6 or None)
PODS = {
    "l2": {"a": [("ipvt-pod1", "10.99.0.11/24", "fd99::11/64"), ("ipvt-pod2", "10.99.0.12/24", None)],
           "b": [("ipvt-pod1", "10.99.0.21/24", "fd99::21/64"), ("ipvt-pod2", "10.99.0.22/24", None)]},
    "l3": {"a": [("ipvt-pod1", "10.1.1.11/24", None), ("ipvt-pod2", "10.1.1.12/24", None)],
           "b": [("ipvt-pod1", "10.1.2.21/24", None), ("ipvt-pod2", "10.1.2.22/24", None)]},
}
POD_NET = {"a": "10.1.1.0/24", "b": "10.1.2.0/24"}
BARRIER_PORT, UDP_PORT, TCP_PORT, DROP_PORT = 7999, 5001, 5002, 9999

UDP_ECHO = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {UDP_PORT}))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
TCP_ECHO = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {TCP_PORT}))
s.listen(4)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(2048))
    c.close()
"""
UDP_SEND = """
import socket, sys
dst, port, n, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
got = 0
for i in range(n):
    s.sendto(b"ipvtrace %d" % i, (dst, port))
    if want:
        try:
            s.recvfrom(2048)
            got += 1
        except socket.timeout:
            pass
print(got)
"""
TCP_SEND = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"ipvtrace tcp")
print(len(c.recv(2048)))
c.close()
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r


def wait_for_nic(timeout: float = 60) -> None:
    """eth0 in this (the root) namespace: at boot, and after a lab's host
    namespace is removed (the kernel moves a physical NIC back, later)."""
    end = time.monotonic() + timeout
    while sh("ip", "link", "show", "eth0", check=False).returncode != 0:
        if time.monotonic() > end:
            raise LabError("no eth0: is the guest's virtio NIC there (modprobe virtio_net)?")
        time.sleep(0.2)


def barrier(node: str, name: str, timeout: float = 900) -> None:
    """Meet the other node over the wire: a's host asks until b's answers."""
    sock = ["ip", "netns", "exec", "ipvt-host", sys.executable, "-c"]
    if node == "b":
        code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"s.bind(('{NODE_IP['b']}',{BARRIER_PORT}))\ns.settimeout({timeout})\n"
                f"while True:\n d,p=s.recvfrom(64)\n if d==b'{name}?':\n"
                f"  s.sendto(b'{name}!',p)\n  break\n"
                # answer repeats of the same question for a moment (a lost answer)
                f"s.settimeout(2)\ntry:\n while True:\n  d,p=s.recvfrom(64)\n"
                f"  s.sendto(b'{name}!',p) if d==b'{name}?' else None\nexcept socket.timeout:\n pass\n")
    else:
        code = (f"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"s.settimeout(0.5)\nend=time.monotonic()+{timeout}\n"
                f"while time.monotonic()<end:\n s.sendto(b'{name}?',('{NODE_IP['b']}',{BARRIER_PORT}))\n"
                f" try:\n  d,_=s.recvfrom(64)\n except OSError:\n  continue\n"
                f" if d==b'{name}!':\n  raise SystemExit(0)\nraise SystemExit(1)\n")
    r = subprocess.run([*sock, code], capture_output=True, text=True, timeout=timeout + 30)
    if r.returncode != 0:
        raise LabError(f"barrier {name}: the other node did not come ({r.stderr.strip()})")
    print(f"node {node}: barrier {name} passed", file=sys.stderr, flush=True)


def build(lab: Lab, node: str, mode: str) -> None:
    sh("ip", "link", "set", "eth0", "netns", "ipvt-host")
    lab.link_up("ipvt-host", "eth0")
    lab.addr("ipvt-host", "eth0", f"{NODE_IP[node]}/24")
    pods = PODS[mode][node]
    lab.pods("ipvt-host", "eth0", [p[0] for p in pods], mode)
    for ns, v4, v6 in pods:
        lab.addr(ns, "eth0", v4)
        if v6:
            lab.run(ns, ["ip", "-6", "addr", "add", v6, "dev", "eth0", "nodad"], check=True)
        if mode == "l3":
            lab.route(ns, "default", dev="eth0")
    if mode == "l3":
        peer = PEER[node]
        lab.route("ipvt-host", POD_NET[peer], via=NODE_IP[peer])


def phase(node: str, mode: str, out: Path) -> list[dict]:
    """One mode: build, record around the traffic, tear down. Node a returns
    the flows it sent."""
    flows: list[dict] = []
    pods = PODS[mode][node]
    peer_pods = PODS[mode][PEER[node]]
    ip = lambda cidr: cidr.split("/")[0]  # noqa: E731
    wait_for_nic()
    with Lab(namespaces=["ipvt-host"]) as lab:
        build(lab, node, mode)
        servers = []
        if node == "b":
            for code in (UDP_ECHO, TCP_ECHO):
                servers.append(subprocess.Popen(["ip", "netns", "exec", pods[0][0],
                                                 sys.executable, "-c", code]))
        else:
            # the wire drops this flow after ipvlan handed it to the parent
            lab.run("ipvt-host", ["tc", "qdisc", "del", "dev", "eth0", "clsact"])  # an earlier phase's
            lab.run("ipvt-host", ["tc", "qdisc", "add", "dev", "eth0", "clsact"], check=True)
            lab.run("ipvt-host", ["tc", "filter", "add", "dev", "eth0", "egress", "protocol", "ip",
                                  "flower", "ip_proto", "udp", "dst_port", str(DROP_PORT),
                                  "action", "drop"], check=True)
        try:
            with recorder(out / f"{mode}-{node}.ipvt"):
                barrier(node, f"rec-{mode}")
                if node == "a":
                    flows = traffic(lab, mode, pods, peer_pods, ip)
                barrier(node, f"done-{mode}")
        finally:
            for p in servers:
                p.kill()
                p.wait()
    return flows


def traffic(lab: Lab, mode: str, pods, peer_pods, ip) -> list[dict]:
    flows = []

    def flow(src_ns, src, dst, proto, expect, **kw):
        flows.append({"mode": mode, "src": src, "dst": dst, "proto": proto,
                      "expect": expect, **kw})

    a1, a2, b1, b2 = pods[0], pods[1], peer_pods[0], peer_pods[1]
    # a's pod pings b's pod: requests cross a -> b, replies b -> a
    ok = lab.ping(a1[0], ip(b1[1]), count=3)
    flow(a1[0], ip(a1[1]), ip(b1[1]), "icmp", "arrived", count=3, answered=ok)
    if a1[2] and b1[2]:
        r = lab.run(a1[0], ["ping", "-6", "-n", "-c", "3", "-i", "0.3", "-W", "2", ip(b1[2])], timeout=40)
        flow(a1[0], ip(a1[2]), ip(b1[2]), "icmp6", "arrived", count=3, answered=r.returncode == 0)
    r = lab.run(a1[0], [sys.executable, "-c", UDP_SEND, ip(b1[1]), str(UDP_PORT), "3", "1"], timeout=60)
    flow(a1[0], ip(a1[1]), ip(b1[1]), "udp", "arrived", count=3, dport=UDP_PORT,
         answered=r.stdout.strip() == "3")
    r = lab.run(a1[0], [sys.executable, "-c", TCP_SEND, ip(b1[1]), str(TCP_PORT)], timeout=60)
    flow(a1[0], ip(a1[1]), ip(b1[1]), "tcp", "arrived", dport=TCP_PORT,
         answered=r.stdout.strip() == "12")
    # lost on the wire: handed to a's parent, dropped by tc before the wire
    lab.run(a2[0], [sys.executable, "-c", UDP_SEND, ip(b2[1]), str(DROP_PORT), "3", "0"], timeout=60)
    flow(a2[0], ip(a2[1]), ip(b2[1]), "udp", "lost", count=3, dport=DROP_PORT, answered=False)
    return flows


def main() -> int:
    node, out = sys.argv[1], Path(sys.argv[2])
    for mod in ("virtio_net", "ipvlan", "sch_ingress", "cls_flower", "act_gact"):
        sh("modprobe", mod, check=False)
    out.mkdir(parents=True, exist_ok=True)
    flows = []
    for mode in ("l2", "l3"):
        flows += phase(node, mode, out)
    if node == "a":
        (out / "flows.json").write_text(json.dumps(flows, indent=1))
    print(f"node {node}: done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
