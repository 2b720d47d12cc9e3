"""Who runs in a network namespace that `ip netns` does not name: the
container runtime, container and Kubernetes pod, from the cgroup of a
process in it and the runtime's own records on this node.

A pod's or container's namespace is held by its processes, never by a file
under /run/netns, so `ip netns` knows nothing of it; its processes' cgroup
path says which runtime made it and the container's id (cgroup v2: the line
`0::PATH`; v1: the `name=systemd` line):

- Kubernetes (kubelet, cgroupfs or systemd driver):
  `.../kubepods/besteffort/pod<UID>/<ID>` or
  `kubepods-besteffort-pod<UID with _>.slice/cri-containerd-<ID>.scope`
  (also `crio-` and `docker-`): the pod is what names the namespace, from the
  kubelet's log directories `/var/log/pods/<namespace>_<name>_<uid>/`.
- podman: `libpod-<ID>` (cgroupfs: under `/libpod_parent/`; systemd:
  `machine.slice/libpod-<ID>.scope`), a pod's containers under
  `machine-libpod_pod_<POD>.slice` or `/libpod_parent/<POD>/`: names from
  podman's container store (`containers.json`), pod names from
  `podman pod ps` (kept nowhere else in a readable form).
- docker: `/docker/<ID>` or `docker-<ID>.scope`: names from
  `/var/lib/docker/containers/<ID>/config.v2.json`.

Nothing here runs per packet: a snapshot reads it once per namespace.
Everything read is checked; anything unreadable leaves the name unknown,
and the namespace is named `pid:N(comm)` as before.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_HEX64 = r"[0-9a-f]{64}"
_K8S_POD = re.compile(r"kubepods(?:[-_/.a-z]*?)[-/]pod([0-9a-f_-]{36})(?:\.slice)?(?:/|$)")
_K8S_CTR = re.compile(rf"(?:cri-containerd-|crio-|docker-|/)({_HEX64})(?:\.scope)?$")
_PODMAN_CTR = re.compile(rf"libpod-({_HEX64})(?:\.scope)?(?:/|$)")
_PODMAN_POD = re.compile(rf"(?:machine-libpod_pod_|/libpod_parent/)({_HEX64})(?:\.slice)?/")
_DOCKER_CTR = re.compile(rf"(?:/docker/|docker-)({_HEX64})(?:\.scope)?(?:/|$)")
MAX_RECORD = 16 << 20   # a runtime's record file larger than this is not read
# `podman pod ps` costs a second or more on a busy node: a pod appearing while
# tracing refreshes its namespace alone, and reuses a list this recent
PODS_FOR_S = 10.0
_pods_read: tuple[float, dict[str, str]] | None = None


@dataclass(frozen=True)
class Who:
    """What runs in a namespace, as far as this node's records say."""

    runtime: str                 # kubernetes | podman | docker
    container_id: str
    container: str | None = None  # the container's name
    pod: str | None = None        # kubernetes: namespace/name; podman: the pod's name
    pod_id: str | None = None

    @property
    def name(self) -> str:
        """How rows name the namespace: the pod if any, else runtime:container."""
        if self.pod:
            return self.pod if self.runtime == "kubernetes" else f"{self.runtime}-pod:{self.pod}"
        return f"{self.runtime}:{self.container or self.container_id[:12]}"

    def to_json(self) -> dict:
        return {k: v for k, v in (("runtime", self.runtime), ("container_id", self.container_id),
                                  ("container", self.container), ("pod", self.pod),
                                  ("pod_id", self.pod_id)) if v}


def cgroup_path(text: str) -> str | None:
    """The unified (v2) path of /proc/PID/cgroup, else the systemd one (v1)."""
    v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        if parts[1] == "name=systemd":
            v1 = parts[2]
    return v1


def parse(path: str) -> Who | None:
    """The runtime and ids a cgroup path names (no names yet)."""
    pod = _K8S_POD.search(path)
    if pod:
        ctr = _K8S_CTR.search(path)
        return Who("kubernetes", ctr.group(1) if ctr else "",
                   pod_id=pod.group(1).replace("_", "-"))
    ctr = _PODMAN_CTR.search(path)
    if ctr and "libpod-conmon-" not in path:
        p = _PODMAN_POD.search(path)
        return Who("podman", ctr.group(1), pod_id=p.group(1) if p else None)
    ctr = _DOCKER_CTR.search(path)
    if ctr:
        return Who("docker", ctr.group(1))
    return None


class Names:
    """The runtimes' records on this node, read once per snapshot, on demand."""

    def __init__(self, root: Path = Path("/"), use_cli: bool = True) -> None:
        self.root = root
        self.use_cli = use_cli
        self._podman: dict[str, str] | None = None
        self._podman_pods: dict[str, str] | None = None
        self._k8s: dict[str, str] | None = None

    def _read_json(self, path: Path):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_RECORD + 1)
            if len(data) > MAX_RECORD:
                return None
            return json.loads(data)
        except (OSError, ValueError):
            return None

    def podman(self, cid: str) -> str | None:
        if self._podman is None:
            self._podman = {}
            store = self._read_json(
                self.root / "var/lib/containers/storage/overlay-containers/containers.json")
            for c in store if isinstance(store, list) else []:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    names = c.get("names")
                    if isinstance(names, list) and names and isinstance(names[0], str):
                        self._podman[c["id"]] = names[0]
        return self._podman.get(cid)

    def podman_pod(self, pod_id: str) -> str | None:
        global _pods_read
        if self._podman_pods is None and _pods_read is not None \
                and time.monotonic() - _pods_read[0] < PODS_FOR_S:
            self._podman_pods = _pods_read[1]   # read moments ago (a new pod's refresh)
        if self._podman_pods is None:
            self._podman_pods = {}
            _pods_read = (time.monotonic(), self._podman_pods)
            if self.use_cli and shutil.which("podman"):
                try:
                    r = subprocess.run(["podman", "pod", "ps", "--no-trunc", "--format", "json"],
                                       capture_output=True, timeout=20)
                    pods = json.loads(r.stdout) if r.returncode == 0 else []
                except (OSError, subprocess.TimeoutExpired, ValueError):
                    pods = []
                for p in pods if isinstance(pods, list) else []:
                    if isinstance(p, dict) and isinstance(p.get("Id"), str) \
                            and isinstance(p.get("Name"), str):
                        self._podman_pods[p["Id"]] = p["Name"]
        return self._podman_pods.get(pod_id)

    def docker(self, cid: str) -> str | None:
        cfg = self._read_json(self.root / "var/lib/docker/containers" / cid / "config.v2.json")
        name = cfg.get("Name") if isinstance(cfg, dict) else None
        if not isinstance(name, str):
            return None
        return name.lstrip("/") or None

    def k8s_pod(self, uid: str) -> str | None:
        """namespace/name of the pod with this uid, from /var/log/pods."""
        if self._k8s is None:
            self._k8s = {}
            try:
                for d in (self.root / "var/log/pods").iterdir():
                    parts = d.name.split("_")
                    if len(parts) == 3:
                        self._k8s[parts[2]] = f"{parts[0]}/{parts[1]}"
            except OSError:
                pass
        return self._k8s.get(uid)

    def name(self, who: Who) -> Who:
        """*who* with the names this node's records give."""
        if who.runtime == "kubernetes":
            return Who(who.runtime, who.container_id, None, self.k8s_pod(who.pod_id or ""),
                       who.pod_id)
        if who.runtime == "podman":
            # a pod's containers share its namespace: the pod names it, and
            # no one container does (the first process is the pod's infra)
            pod = self.podman_pod(who.pod_id) if who.pod_id else None
            return Who(who.runtime, who.container_id,
                       None if who.pod_id else self.podman(who.container_id), pod, who.pod_id)
        return Who(who.runtime, who.container_id, self.docker(who.container_id))


def identify(pid: str | int, names: Names, proc: Path = Path("/proc")) -> Who | None:
    """What runs the process *pid*, named; None when its cgroup names no runtime."""
    try:
        with open(proc / str(pid) / "cgroup", "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return None
    path = cgroup_path(text)
    who = parse(path) if path else None
    return names.name(who) if who else None
