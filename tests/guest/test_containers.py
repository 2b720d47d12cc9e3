"""Rows name the containers users run, on this real kernel: podman (from
Debian's packages) runs two containers with no network of their own
(`--network none`), and an ipvlan slave of a veth parent is moved into each
namespace, as an ipvlan CNI plugin does. `record` then names their rows by
container, replay shows the same names elsewhere, and --container selects
them. Nothing of the containers is in /run/netns.

(podman pods are not run here: in these guests podman 4.3 cannot start a
pod's infra container, `crun: mknod /dev/null: Operation not permitted`,
with its own pause image or ours; pod names are tested from cgroup paths and
kubelet records in tests/test_containers.py.)"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ipvtrace.lab.netlab import Lab

from guest_helpers import wait_ready

HOST = "ipvt-ct-host"
IMAGE = "localhost/ipvt-bb:1"


def sh(*cmd: str, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr[-1500:]}"
    return r.stdout


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """podman with its store on a tmpfs (the guest's root is the host's,
    read-only) and a busybox image imported from a tarball (no registry)."""
    assert shutil.which("podman") and shutil.which("catatonit"), "scripts/setup installs podman"
    store = Path("/var/lib/containers")
    assert store.is_dir(), "scripts/setup makes /var/lib/containers for the guests' podman"
    sh("mount", "-t", "tmpfs", "tmpfs", str(store))
    try:
        root = tmp_path_factory.mktemp("rootfs")
        (root / "bin").mkdir()
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        (root / "bin" / "sleep").symlink_to("busybox")
        tar = root.parent / "rootfs.tar"
        sh("tar", "-C", str(root), "-cf", str(tar), ".")
        sh("podman", "import", str(tar), IMAGE)
        yield
    finally:
        subprocess.run(["podman", "pod", "rm", "-af"], capture_output=True, timeout=300)
        subprocess.run(["podman", "rm", "-af"], capture_output=True, timeout=300)
        subprocess.run(["umount", "-l", str(store)], capture_output=True)


def pid_of(container: str) -> str:
    return sh("podman", "inspect", "-f", "{{.State.Pid}}", container).strip()


def plug(lab: Lab, pid: str, slave: str, ip: str) -> None:
    """An ipvlan slave of ens10 into the namespace of process *pid*, as eth0."""
    sh("ip", "-n", HOST, "link", "add", "link", "ens10", "name", slave, "type", "ipvlan", "mode", "l2")
    sh("ip", "-n", HOST, "link", "set", slave, "netns", pid)
    enter = ["nsenter", "-t", pid, "-n"]
    sh(*enter, "ip", "link", "set", slave, "name", "eth0")
    sh(*enter, "ip", "addr", "add", ip, "dev", "eth0")
    sh(*enter, "ip", "link", "set", "eth0", "up")


def test_rows_name_the_containers(podman, tmp_path):
    out = Path(tmp_path / "ct.ipvt")
    with Lab(namespaces=[HOST]) as lab:
        lab.veth(HOST, "ens10", HOST, "peer0")
        sh("podman", "run", "-d", "--network", "none", "--name", "ipvt-web", IMAGE, "sleep", "3600")
        sh("podman", "run", "-d", "--network", "none", "--name", "ipvt-cart", IMAGE, "sleep", "3600")
        web, cart = pid_of("ipvt-web"), pid_of("ipvt-cart")
        plug(lab, web, "ipvl-web", "10.76.0.1/24")
        plug(lab, cart, "ipvl-cart", "10.76.0.2/24")
        assert not any(Path("/run/netns").glob("*web*")), "podman's namespaces are anonymous"
        ready = tmp_path / "ready"
        rec = subprocess.Popen([sys.executable, "-m", "ipvtrace", "record", "-o", str(out),
                                "--ready-file", str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_ready(ready, rec)
        sh("nsenter", "-t", web, "-n", "ping", "-c", "3", "-i", "0.2", "10.76.0.2")
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=600)
        assert rec.returncode == 0, err
    rows = [json.loads(l) for l in sh(sys.executable, "-m", "ipvtrace", "replay", "--json",
                                      str(out)).splitlines()]
    pings = [r for r in rows if r["proto"] == "icmp" and r["kind"] == "echo-request"]
    assert len(pings) == 3, rows[:3]
    for r in pings:
        assert r["branch"] == "tx.l2.local" and r["complete"], r
        assert r["from"]["netns"] == "podman:ipvt-web" and r["from"]["container"] == "ipvt-web", r
        assert r["to"]["netns"] == "podman:ipvt-cart" and r["to"]["container"] == "ipvt-cart", r
        assert "pod" not in r["from"] and "pod" not in r["to"], r
    replies = [r for r in rows if r["proto"] == "icmp" and r["kind"] == "echo-reply"]
    assert len(replies) == 3 and all(r["from"]["container"] == "ipvt-cart" for r in replies), replies
    # the filters select by those names, in replay as in live
    by_ct = sh(sys.executable, "-m", "ipvtrace", "replay", "--json", "--container", "ipvt-w*", str(out))
    by_other = sh(sys.executable, "-m", "ipvtrace", "replay", "--json", "--container", "ipvt-cart",
                  str(out))
    none = sh(sys.executable, "-m", "ipvtrace", "replay", "--json", "--pod", "*", str(out))
    icmp = {(r["kind"], r["time"]) for r in rows if r["proto"] == "icmp"}
    for text in (by_ct, by_other):
        got = {(r["kind"], r["time"]) for r in map(json.loads, text.splitlines()) if r["proto"] == "icmp"}
        assert got == icmp
    assert none == ""
