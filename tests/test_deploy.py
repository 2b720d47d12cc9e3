"""deploy/: the DaemonSet read into the Kubernetes Python client's models,
strictly (a misspelt or misplaced key is dropped by the models, so the
round trip must give back the file), and what it asks of a node: the mounts
and capabilities tracing needs, the metrics on the node's IP only, and the
image scripts/build-image makes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def model(doc: dict):
    api = ApiClient()
    group = doc["apiVersion"].split("/")[-1].capitalize()   # v1 -> V1
    obj = api._ApiClient__deserialize(doc, f"{group}{doc['kind']}")
    return api, obj


@pytest.mark.parametrize("doc", docs("daemonset.yaml"), ids=lambda d: d["kind"])
def test_manifest_is_what_the_models_read(doc):
    api, obj = model(doc)
    assert api.sanitize_for_serialization(obj) == doc


def test_daemonset_asks_for_what_tracing_needs_and_no_more():
    ds = next(d for d in docs("daemonset.yaml") if d["kind"] == "DaemonSet")
    _, obj = model(ds)
    spec = obj.spec.template.spec
    assert spec.host_pid and spec.host_network   # every pod's netns; the root netns
    (c,) = spec.containers
    sc = c.security_context
    assert sc.privileged is False and sc.allow_privilege_escalation is False
    assert sc.capabilities.drop == ["ALL"]
    assert sorted(sc.capabilities.add) == ["BPF", "PERFMON", "SYSLOG", "SYS_ADMIN", "SYS_PTRACE"]
    mounts = {m.name: m for m in c.volume_mounts}
    vols = {v.name: v for v in spec.volumes}
    assert set(mounts) == set(vols)
    host = {m.mount_path: (vols[n].host_path.path, bool(m.read_only)) for n, m in mounts.items()
            if vols[n].host_path}
    assert host == {"/sys/kernel/tracing": ("/sys/kernel/tracing", False),
                    "/lib/modules": ("/lib/modules", True), "/usr/src": ("/usr/src", True),
                    "/run/netns": ("/run/netns", True), "/var/log/pods": ("/var/log/pods", True)}
    assert mounts["netns"].mount_propagation == "HostToContainer"
    # metrics on the node's own address, never every interface
    assert c.args[:3] == ["stats", "--listen", "$(HOST_IP):9437"]
    (env,) = c.env
    assert (env.name, env.value_from.field_ref.field_path) == ("HOST_IP", "status.hostIP")
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert c.image == f"localhost/ipvtrace:{version}"


def test_the_image_definitions_agree():
    """deploy/Containerfile and scripts/build-image install the same packages."""
    cf = (DEPLOY / "Containerfile").read_text()
    bi = (REPO / "scripts" / "build-image").read_text()
    apt = re.search(r"--no-install-recommends ([a-z0-9 .-]+?) \\", cf).group(1).split()
    inc = re.search(r"--include=([a-z0-9,.-]+)", bi).group(1).split(",")
    assert sorted(apt) == sorted(inc) and "python3-bpfcc" in apt
    # bcc from Debian only: never the unrelated PyPI package of that name
    assert not re.search(r"pip[^\n]*install[^\n]*\bbcc\b", cf + bi)
