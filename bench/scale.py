"""Benchmark, node scale (as root on a kernel with ipvlan, e.g. in the VM):
500 network namespaces with an ipvlan slave each on one parent, as a node
with 500 pods. Measures what ipvtrace's netlink side costs there: the
start-up snapshot, the refresh for one pod that appears while tracing, and
the per-packet device/port lookup. Prints one JSON line prefixed SCALE."""
from __future__ import annotations

import json
import os
import time

from ipvtrace.capture import snapshot
from ipvtrace.model.topology import Topology
from ipvtrace.lab.netlab import Lab

PODS = int(os.environ.get("IPVT_BENCH_PODS", "500"))
HOST = "ipvt-sc-host"


def main() -> None:
    pods = [f"ipvt-sc-{i}" for i in range(PODS)]
    with Lab(namespaces=[HOST]) as lab:
        lab.veth(HOST, "ens10", HOST, "peer0")
        t = time.monotonic()
        lab.pods(HOST, "ens10", pods, "l2")
        build_s = time.monotonic() - t
        t = time.monotonic()
        snap = snapshot.take()
        take_s = time.monotonic() - t
        topo = Topology.from_snapshots([snap])
        slaves = [d for d in snap["devices"] if d.get("kind") == "ipvlan"]
        resolved = sum(1 for d in slaves if d.get("link_netns") is not None)
        # one more pod while tracing: its namespace alone is read
        lab.pods(HOST, "ens10", ["ipvt-sc-new"], "l2")
        inum = snapshot.netns_inode("/run/netns/ipvt-sc-new")
        t = time.monotonic()
        one = snapshot.take_netns(inum, topo.devices)
        refresh_s = time.monotonic() - t
        topo.add(one)
        # the per-packet lookups the classifier makes (device, port of a slave
        # and of the parent), over every slave
        keys = [(d["netns"], d["ifindex"]) for d in slaves]
        parent = next(d for d in snap["devices"] if d["name"] == "ens10")
        n = 0
        t = time.perf_counter()
        for _ in range(20):
            for k in keys:
                topo.device(*k)
                topo.port_of(*k)
                topo.port_of(parent["netns"], parent["ifindex"])
                n += 3
        lookup_ns = (time.perf_counter() - t) / n * 1e9
    print("SCALE " + json.dumps({
        "pods": PODS, "namespaces_seen": len(snap["namespaces"]), "build_s": round(build_s, 2),
        "snapshot_take_s": round(take_s, 3), "slaves": len(slaves), "slaves_parent_resolved": resolved,
        "refresh_one_pod_s": round(refresh_s, 4),
        "refresh_one_pod_devices": len(one["devices"]),
        "refresh_new_pod_port": topo.port_of(inum, one["devices"][-1]["ifindex"]) if one["devices"] else None,
        "lookup_ns": round(lookup_ns, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
