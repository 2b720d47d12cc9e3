"""Two nodes, one story: two guests joined by a virtual wire (QEMU socket
networking), node-a on Debian's 6.1 and node-b on 6.12 (a cluster mid-upgrade),
each with an ipvlan port on its wire-facing NIC and pods in namespaces
(tests/two_nodes_node.py). Both record while the pods talk across in L2 and
L3 mode; `ipvtrace merge` joins the recordings and the merged replay must
show every packet leave a and reach b (and the answers back), and the flow a
tc filter dropped on a's wire as left, never arrived.
"""
import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from ipvtrace.lab.vm import REPO, guest_script, qemu
from two_nodes_checks import check_merged, check_text

NODES = {"a": "6.1", "b": "6.12"}
MAC = {"a": "52:54:00:12:34:0a", "b": "52:54:00:12:34:0b"}
WORK = REPO / "build" / "two-nodes"

pytestmark = pytest.mark.vm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nodes():
    shutil.rmtree(WORK, ignore_errors=True)
    port = _free_port()
    out: dict = {}

    def boot(node: str, wire: str) -> None:
        work = WORK / node
        script = guest_script(f"python tests/two_nodes_node.py {node} {work / 'rec'}")
        nic = ["-netdev", f"socket,id=wire,{wire}",
               "-device", f"virtio-net-pci,netdev=wire,mac={MAC[node]}"]
        try:
            out[node] = qemu.run(NODES[node], script, work, cpus=1, timeout=2400, extra_args=nic)
        except qemu.VMError as exc:
            out[node] = exc

    # the listening side first: QEMU's connect side gives up if nobody listens
    a = threading.Thread(target=boot, args=("a", f"listen=127.0.0.1:{port}"))
    a.start()
    time.sleep(3)
    b = threading.Thread(target=boot, args=("b", f"connect=127.0.0.1:{port}"))
    b.start()
    a.join()
    b.join()
    return out


@pytest.mark.parametrize("node", ["a", "b"])
def test_node_ran(nodes, node):
    r = nodes[node]
    assert not isinstance(r, Exception), str(r)
    assert r.kernel == qemu.resolve_kernel(NODES[node])
    assert r.rc == 0, "\n".join(r.log.splitlines()[-40:])


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_merged_replay_tells_each_packets_path(nodes, mode, tmp_path):
    if any(isinstance(r, Exception) or r.rc for r in nodes.values()):
        pytest.fail("a node failed (see test_node_ran)")
    rec = {n: WORK / n / "rec" / f"{mode}-{n}.ipvt" for n in NODES}
    both = tmp_path / f"{mode}.ipvt"
    cli = [sys.executable, "-m", "ipvtrace"]
    m = subprocess.run([*cli, "merge", str(rec["a"]), str(rec["b"]), "--name", "node-a",
                        "--name", "node-b", "-o", str(both)], capture_output=True, text=True)
    assert m.returncode == 0, m.stderr
    summary = json.loads(m.stdout)
    r = subprocess.run([*cli, "replay", str(both), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    flows = json.loads((WORK / "a" / "rec" / "flows.json").read_text())
    check_merged(rows, flows, mode, summary)
    text = subprocess.run([*cli, "replay", str(both)], capture_output=True, text=True).stdout
    # "never reached node-b" for the dropped flow, unless node-b's recording
    # lost evidence then: then "not known", as its --json row says
    check_text(text, rows)
    # keep what the kernels did: the fast tier replays it anywhere (test_merge.py)
    keep = WORK / "keep"
    keep.mkdir(exist_ok=True)
    for n, p in rec.items():
        shutil.copy(p, keep / f"two-nodes-{mode}-{n}.ipvt")
    shutil.copy(WORK / "a" / "rec" / "flows.json", keep / "two-nodes-flows.json")
