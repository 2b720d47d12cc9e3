"""Naming a namespace by what runs in it: cgroup paths of the runtimes as
they write them (kubelet with either cgroup driver, podman, docker), the
runtimes' records on a node (a directory tree made here), and what rows and
filters do with the names. The real podman is run in the guest suite
(tests/guest/test_containers.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipvtrace.capture import containers
from ipvtrace.model.filters import RowFilter
from ipvtrace.model.topology import Topology

CID = "57b8b25a7dbf7b90611cc039c0bd4f0ba2b06709bc78ae94b5d813a7768da6fe"
PID_ = "9f0c8e3b1a2d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"
UID = "1c9d2f0e-5a4b-4c3d-8e7f-0a1b2c3d4e5f"


@pytest.mark.parametrize("path, runtime, cid, pod_id", [
    # kubelet, systemd cgroup driver, containerd
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}"
     f".slice/cri-containerd-{CID}.scope", "kubernetes", CID, UID),
    # kubelet, cgroupfs driver (a guaranteed pod has no QoS level)
    (f"/kubepods/pod{UID}/{CID}", "kubernetes", CID, UID),
    (f"/kubepods/burstable/pod{UID}/{CID}", "kubernetes", CID, UID),
    # CRI-O
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}"
     f".slice/crio-{CID}.scope", "kubernetes", CID, UID),
    # podman: cgroupfs (as in the guest), systemd, and in a pod
    (f"/libpod_parent/libpod-{CID}", "podman", CID, None),
    (f"/machine.slice/libpod-{CID}.scope", "podman", CID, None),
    (f"/machine.slice/machine-libpod_pod_{PID_}.slice/libpod-{CID}.scope", "podman", CID, PID_),
    (f"/libpod_parent/{PID_}/libpod-{CID}", "podman", CID, PID_),
    # docker: cgroupfs and systemd drivers
    (f"/docker/{CID}", "docker", CID, None),
    (f"/system.slice/docker-{CID}.scope", "docker", CID, None),
])
def test_runtime_from_cgroup_path(path, runtime, cid, pod_id):
    who = containers.parse(path)
    assert who is not None and (who.runtime, who.container_id, who.pod_id) == (runtime, cid, pod_id)


@pytest.mark.parametrize("path", [
    "/", "/user.slice/user-0.slice/session-1.scope", "/system.slice/sshd.service",
    f"/libpod_parent/libpod-conmon-{CID}",      # podman's monitor, not the container
    "/docker/not-an-id", "/kubepods/besteffort",
])
def test_no_runtime(path):
    assert containers.parse(path) is None


def test_cgroup_file_v1_and_v2():
    assert containers.cgroup_path("0::/libpod_parent/x\n") == "/libpod_parent/x"
    v1 = f"12:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n"
    assert containers.cgroup_path(v1) == f"/docker/{CID}"
    assert containers.cgroup_path("garbage\n\n:::\n") is None


def node(tmp_path: Path) -> Path:
    """A node's records: podman's store, docker's config, kubelet's pod logs."""
    store = tmp_path / "var/lib/containers/storage/overlay-containers"
    store.mkdir(parents=True)
    store.joinpath("containers.json").write_text(json.dumps([
        {"id": CID, "names": ["web"]}, {"id": "x" * 64, "names": "not-a-list"}, "junk"]))
    dock = tmp_path / "var/lib/docker/containers" / PID_
    dock.mkdir(parents=True)
    dock.joinpath("config.v2.json").write_text(json.dumps({"Name": "/db"}))
    (tmp_path / f"var/log/pods/shop_cart-5d8f_{UID}/app").mkdir(parents=True)
    (tmp_path / "var/log/pods/badname").mkdir()
    return tmp_path


def test_names_from_the_nodes_records(tmp_path):
    names = containers.Names(node(tmp_path), use_cli=False)
    web = names.name(containers.Who("podman", CID))
    assert (web.container, web.name) == ("web", "podman:web")
    db = names.name(containers.Who("docker", PID_))
    assert (db.container, db.name) == ("db", "docker:db")
    pod = names.name(containers.Who("kubernetes", CID, pod_id=UID))
    assert (pod.pod, pod.name) == ("shop/cart-5d8f", "shop/cart-5d8f")
    # unknown ids keep a short id: never a wrong name
    other = names.name(containers.Who("docker", "a" * 64))
    assert (other.container, other.name) == (None, "docker:" + "a" * 12)
    gone = names.name(containers.Who("kubernetes", CID, pod_id="0" * 36))
    assert gone.pod is None and gone.name == "kubernetes:" + CID[:12]


@pytest.mark.parametrize("content", [b"{", b"[1, 2", b"\xff\xfe", b'{"id": 1}', b"null"])
def test_damaged_records_leave_names_unknown(tmp_path, content):
    store = tmp_path / "var/lib/containers/storage/overlay-containers"
    store.mkdir(parents=True)
    store.joinpath("containers.json").write_bytes(content)
    dock = tmp_path / "var/lib/docker/containers" / CID
    dock.mkdir(parents=True)
    dock.joinpath("config.v2.json").write_bytes(content)
    names = containers.Names(tmp_path, use_cli=False)
    assert names.podman(CID) is None and names.docker(CID) is None


def test_identify_reads_the_process_cgroup(tmp_path):
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(f"0::/libpod_parent/libpod-{CID}\n")
    (proc / "43").mkdir()
    (proc / "43" / "cgroup").write_text("0::/user.slice\n")
    names = containers.Names(node(tmp_path), use_cli=False)
    assert containers.identify(42, names, proc).name == "podman:web"
    assert containers.identify(43, names, proc) is None
    assert containers.identify(44, names, proc) is None   # gone


def test_rows_carry_pod_and_container_and_filters_use_them():
    topo = Topology.from_snapshots([{"namespaces": [
        {"inum": 7, "name": "shop/cart-5d8f", "who": {"runtime": "kubernetes", "pod": "shop/cart-5d8f"}},
        {"inum": 8, "name": "podman:web", "who": {"runtime": "podman", "container": "web"}},
        {"inum": 9, "name": "ipvt-a"}]}])
    a, b, c = topo.dev_ref(7, 2, "eth0"), topo.dev_ref(8, 2, "eth0"), topo.dev_ref(9, 2, "eth0")
    assert a == {"dev": "eth0", "netns": "shop/cart-5d8f", "ifindex": 2, "pod": "shop/cart-5d8f"}
    assert b["container"] == "web" and "pod" not in b and "pod" not in c and "container" not in c
    row = {"branch": "tx.l2.local", "from": a, "to": b, "mode": "l2"}
    assert RowFilter(pod=("shop/*",)).matches(row)
    assert RowFilter(container=("we?",)).matches(row)
    assert not RowFilter(pod=("default/*",)).matches(row)
    assert not RowFilter(container=("db",)).matches({"branch": "x", "from": c, "to": a})
    f = RowFilter(pod=("shop/*",), container=("web",))
    assert RowFilter.from_json(f.to_json()) == f
