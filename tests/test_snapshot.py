"""The netlink snapshot's data side, without netlink: links into other
namespaces are resolved from the devices themselves (no call per pair of
namespaces), and the per-packet lookups are dict accesses."""
from ipvtrace.model.topology import Topology, resolve_links

HOST, MAC = 4026531840, "02:00:00:00:00:01"


def node(pods: int) -> list[dict]:
    devs = [{"netns": HOST, "ifindex": 2, "name": "ens10", "kind": "veth", "mac": MAC,
             "link": 3, "link_netns": HOST},
            {"netns": HOST, "ifindex": 3, "name": "peer0", "kind": "veth", "mac": "02:00:00:00:00:02",
             "link": 2, "link_netns": HOST}]
    for i in range(pods):
        devs.append({"netns": 5000 + i, "ifindex": 2, "name": "eth0", "kind": "ipvlan", "mac": MAC,
                     "link": 2, "link_nsid": 0, "link_netns": None,
                     "ipvlan": {"mode": "l3" if i % 2 else "l2", "flags": []}})
    return devs


def test_slaves_find_their_parent_by_mac_and_ifindex():
    devs = node(500)
    resolve_links(devs, [])
    assert all(d["link_netns"] == HOST for d in devs if d["kind"] == "ipvlan")
    assert all("link_nsid" not in d for d in devs)


def test_a_veth_finds_its_peer_and_ambiguity_stays_unresolved():
    a = {"netns": 10, "ifindex": 7, "kind": "veth", "mac": "02:aa", "link": 9, "link_nsid": 1}
    b = {"netns": 11, "ifindex": 9, "kind": "veth", "mac": "02:bb", "link": 7, "link_nsid": 4}
    decoy = {"netns": 12, "ifindex": 9, "kind": "dummy", "mac": "02:cc", "link": None}
    resolve_links([a, b], [decoy])
    assert a["link_netns"] == 11 and b["link_netns"] == 10
    # two namespaces hold a device that fits: not guessed
    s = {"netns": 20, "ifindex": 2, "kind": "ipvlan", "mac": MAC, "link": 2, "link_nsid": 0}
    twins = [{"netns": n, "ifindex": 2, "kind": "veth", "mac": MAC, "link": None} for n in (1, 2)]
    resolve_links([s], twins)
    assert s["link_netns"] is None and s["link_nsid"] == 0


def test_port_of_a_parent_is_indexed_and_later_snapshots_win():
    devs = node(3)
    resolve_links(devs, [])
    topo = Topology.from_snapshots([{"namespaces": [], "devices": devs}])
    assert topo.port_of(5000, 2) == {"mode": "l2", "flags": []}
    assert topo.port_of(HOST, 2)["mode"] in ("l2", "l3")
    # the port re-set to l3s (every slave reports it): the parent follows
    redone = [dict(d, ipvlan={"mode": "l3s", "flags": []}) for d in devs if d["kind"] == "ipvlan"]
    topo.add({"namespaces": [], "devices": redone})
    assert topo.port_of(HOST, 2) == {"mode": "l3s", "flags": []}
    assert topo.port_of(HOST, 3) is None


def test_a_pod_read_before_its_parent_is_tied_once_the_parent_is_known():
    """Devices appear in any order while tracing: a pod's namespace read
    before the parent's leaves its link open; the parent's arrival ties it,
    and the parent's port mode is known from then on."""
    devs = node(2)
    host = [d for d in devs if d["netns"] == HOST]
    pods = [d for d in devs if d["netns"] != HOST]
    topo = Topology()
    for p in pods:
        one = [dict(p)]
        resolve_links(one, topo.devices)
        topo.add({"namespaces": [], "devices": one})
    assert topo.port_of(HOST, 2) is None
    topo.add({"namespaces": [], "devices": [dict(d) for d in host]})
    assert topo.device(5000, 2)["link_netns"] == HOST
    assert topo.port_of(HOST, 2) is not None


def test_a_namespace_is_read_without_leaving_ours():
    """take() reads each namespace through a socket made there by a short-lived
    thread (no fork per namespace): what it reads is that namespace's, and the
    reading thread stays in its own. Needs root (CI runs as root)."""
    import os
    import subprocess

    from ipvtrace.capture import snapshot

    name = f"ipvt-snap-{os.getpid()}"
    own = os.stat("/proc/thread-self/ns/net").st_ino
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        snap = snapshot.take()
        inum = snapshot.netns_inode(f"/run/netns/{name}")
        [lo] = [d for d in snap["devices"] if d["netns"] == inum]
        assert (lo["name"], lo["up"]) == ("lo", True) and "127.0.0.1/8" in lo["addrs"]
        assert os.stat("/proc/thread-self/ns/net").st_ino == own
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)



def test_a_snapshot_taken_beside_the_compile_is_the_callers():
    """live, record and stats take the start snapshot in a thread while bcc
    compiles (lifecycle.Beside): the caller gets that thread's snapshot,
    and a failure there is raised in the caller's thread, not lost with
    the thread. Needs root (CI runs as root)."""
    import os
    import threading

    import pytest

    from ipvtrace.capture import snapshot
    from ipvtrace.lifecycle import Beside

    own = os.stat("/proc/thread-self/ns/net").st_ino
    names = []

    def take() -> dict:
        names.append(threading.current_thread().name)
        return snapshot.take()

    snap = Beside(take, "ipvtrace-snapshot").result()
    assert names == ["ipvtrace-snapshot"]
    assert any(d["netns"] == own and d["name"] == "lo" for d in snap["devices"])
    assert os.stat("/proc/thread-self/ns/net").st_ino == own

    def gone() -> dict:
        raise FileNotFoundError("/run/netns/x")

    with pytest.raises(FileNotFoundError, match="/run/netns/x"):
        Beside(gone, "ipvtrace-snapshot").result()
