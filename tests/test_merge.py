"""`ipvtrace merge`: packet identity, the join across nodes and the clock,
the merged file as input from a stranger, and the replay of recordings two
real kernels made (node-a Debian 6.1, node-b 6.12, joined by a wire; kept by
tests/test_two_nodes.py)."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ipvtrace.merge import replay_merged, run_merge
from ipvtrace.model import crossnode, identity
from ipvtrace.output import merged, recording
from ipvtrace.output.recording import RecordingError
from two_nodes_checks import check_merged, check_text

FIX = Path(__file__).parent / "fixtures"
ARTICLE = FIX / "article-6.12.ipvt"


def ipv4_icmp(src: bytes, dst: bytes, ident: int, seq: int, ttl: int = 64, csum: int = 0) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = (bytes([0x45, 0]) + struct.pack("!HHH", 84, ident, 0x4000) + bytes([ttl, 1])
          + struct.pack("!H", csum) + src + dst)
    return eth + ip + bytes([8, 0, 0, 0]) + struct.pack("!HH", 7, seq) + b"payload!"


A, B = bytes([10, 1, 1, 11]), bytes([10, 1, 2, 21])


def test_identity_ignores_what_a_hop_rewrites():
    one = identity.of_frame(ipv4_icmp(A, B, 100, 1))
    # a routed hop: other MACs, TTL and header checksum; the same packet
    routed = ipv4_icmp(A, B, 100, 1, ttl=63, csum=0x1234)
    routed = b"\xaa" * 12 + routed[12:]
    assert identity.of_frame(routed) == one
    # another IP id or ICMP sequence is another packet
    assert identity.of_frame(ipv4_icmp(A, B, 101, 1)) != one
    assert identity.of_frame(ipv4_icmp(A, B, 100, 2)) != one
    # the sender's ICMP checksum may be a partial sum (checksum offload)
    partial = bytearray(ipv4_icmp(A, B, 100, 1))
    partial[14 + 20 + 2:14 + 20 + 4] = b"\x12\x34"
    assert identity.of_frame(bytes(partial)) == one
    # captured from the L3 header (no MAC header on this skb): the same
    assert identity.of_frame(ipv4_icmp(A, B, 100, 1)[14:], has_mac=False) == one
    # too little captured to tell packets apart
    assert identity.of_frame(ipv4_icmp(A, B, 100, 1)[:30]) is None
    assert identity.of_frame(b"") is None


def seen(node, index, ts, ident, leaves=False, arrives=False, dst="10.1.2.21"):
    return crossnode.Seen(node=node, index=index, ts=ts, ident=ident, leaves=leaves,
                          arrives=arrives, dst=dst)


def test_join_aligns_clocks_from_both_ways_and_pairs_by_identity():
    # node 1's kernel clock runs 5 s ahead of node 0's (same wall clock); the
    # wire takes 300 us each way
    skew, wire = 5_000_000_000, 300_000
    a, b = [], []
    for k in range(4):
        t = 1_000_000_000 + k * 200_000_000
        req, rep = bytes([1, k]), bytes([2, k])
        a.append(seen(0, len(a), t, req, leaves=True))
        b.append(seen(1, len(b), t + wire + skew, req, arrives=True))
        b.append(seen(1, len(b), t + 2 * wire + skew, rep, leaves=True,
                      dst="10.1.1.11"))
        a.append(seen(0, len(a), t + 3 * wire, rep, arrives=True, dst="10.1.1.11"))
    # a packet to b's pod that never arrived, and one to nobody recorded
    a.append(seen(0, len(a), 2_000_000_000, b"lost", leaves=True))
    a.append(seen(0, len(a), 2_000_000_000, b"away", leaves=True, dst="192.0.2.1"))
    j = crossnode.join([a, b], [0, 0], [{"10.1.1.11"}, {"10.1.2.21"}])
    assert j.offsets_ns[1] == -skew and "both ways" in j.method[1]
    arrived = [c for c in j.crossings if c.arrived is not None]
    assert len(arrived) == 8
    for c in arrived:
        assert c.left.ident == c.arrived.ident and c.left.node != c.arrived.node
        assert c.arrived.ts + j.offsets_ns[c.arrived.node] - c.left.ts - j.offsets_ns[c.left.node] == wire
    lost = [c for c in j.crossings if c.arrived is None]
    assert [(c.left.ident, c.to_node, c.unseen) for c in lost] == [(b"lost", 1, False)]


def test_a_packet_the_destination_may_have_missed_is_not_known_not_lost():
    """Node b's recorder noted lost evidence (a loss mark, on its clock) in
    the seconds after a packet to it left, or just before (an older
    recorder stamped its mark with the tick's start, before the poll that
    brought the loss): that packet is not known, not lost. A mark from well
    before the packet left, or long after, changes nothing."""
    s = 1_000_000_000
    a = [seen(0, 0, 1 * s, b"soon", leaves=True), seen(0, 1, 5 * s, b"well before", leaves=True),
         seen(0, 2, 10 * s, b"clean", leaves=True), seen(0, 3, 20 * s, b"tick before", leaves=True)]
    b = [seen(1, 0, 30 * s, b"late", arrives=True)]
    spans = [(0, 40 * s), (0, 40 * s)]
    marks = [[], [int(1.4 * s), int(3.5 * s), int(19.809 * s)]]
    j = crossnode.join([a, b], [0, 0], [{"10.1.1.11"}, {"10.1.2.21"}], spans, marks)
    assert {c.left.ident: c.unseen for c in j.crossings} == {
        b"soon": True, b"well before": False, b"clean": False, b"tick before": True}
    j = crossnode.join([a, b], [0, 0], [{"10.1.1.11"}, {"10.1.2.21"}], spans, [[], []])
    assert not any(c.unseen for c in j.crossings)


def test_join_under_jitter_never_puts_an_arrival_before_its_departure():
    """Seen in CI on two emulated nodes: delays from 0.4 to 29 ms each way.
    Aligned on the median delays, one packet arrived 0.75 ms before it left;
    the clock from the smallest delays keeps every hop forward in time."""
    import random

    rnd = random.Random(7)
    skew = 3_442_000_000
    a, b = [], []
    for k in range(40):
        t = 1_000_000_000 + k * 50_000_000
        there, back = rnd.choice((400_000, 30_000_000)), rnd.randint(300_000, 29_000_000)
        a.append(seen(0, len(a), t, bytes([1, k]), leaves=True))
        b.append(seen(1, len(b), t + there + skew, bytes([1, k]), arrives=True))
        b.append(seen(1, len(b), t + there + 10_000 + skew, bytes([2, k]), leaves=True))
        a.append(seen(0, len(a), t + there + 10_000 + back, bytes([2, k]), arrives=True))
    j = crossnode.join([a, b], [0, 0], [set(), set()])
    delays = [c.arrived.ts + j.offsets_ns[c.arrived.node] - c.left.ts - j.offsets_ns[c.left.node]
              for c in j.crossings]
    assert len(delays) == 80 and min(delays) >= 0, min(delays)


def test_join_never_pairs_by_time_alone():
    # b saw something at the very moment a sent: another packet (identity)
    a = [seen(0, 0, 10, b"x", leaves=True)]
    b = [seen(1, 0, 10, b"y", arrives=True)]
    j = crossnode.join([a, b], [0, 0], [set(), {"10.1.2.21"}])
    assert [c.arrived for c in j.crossings] == [None]


def test_join_repeated_identity_pairs_the_nearest_within_the_window():
    # an identical frame twice (an ARP request repeated): each arrival once
    a = [seen(0, 0, 1_000_000_000, b"arp", leaves=True), seen(0, 1, 3_000_000_000, b"arp", leaves=True)]
    b = [seen(1, 0, 3_000_100_000, b"arp", arrives=True), seen(1, 1, 1_000_100_000, b"arp", arrives=True)]
    j = crossnode.join([a, b], [0, 0], [set(), set()])
    assert sorted((c.left.index, c.arrived.index) for c in j.crossings) == [(0, 1), (1, 0)]
    # a repeated identity does not say which copy is which: no clock from it
    assert "wall clock" in j.method[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ipvtrace", *map(str, args)],
                          capture_output=True, text=True)


def test_merged_file_round_trip_keeps_each_nodes_rows(tmp_path):
    out = tmp_path / "m.ipvt"
    run_merge([ARTICLE, FIX / "article-6.1.ipvt"], out, ["x", "y"])
    rows: list = []
    replay_merged(out, rows.append)
    single = run_cli("replay", ARTICLE, "--json")
    assert single.returncode == 0
    ours = [r for r in rows if r["node"] == "x"]
    want = [json.loads(line) for line in single.stdout.splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("node", "time", "crossing")}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, ours))) == sorted(map(json.dumps, map(strip, want)))
    assert not out.with_name("m.ipvt.partial").exists()


def test_merge_refuses_bad_input(tmp_path):
    out = tmp_path / "m.ipvt"
    r = run_cli("merge", ARTICLE, "-o", out)
    assert r.returncode == 2 and "2 to" in r.stderr
    r = run_cli("merge", ARTICLE, ARTICLE, "--name", "a b", "--name", "c", "-o", out)
    assert r.returncode == 2 and "bad node name" in r.stderr
    r = run_cli("merge", ARTICLE, tmp_path / "nope.ipvt", "-o", out)
    assert r.returncode == 2 and "no such file" in r.stderr
    assert run_cli("merge", ARTICLE, FIX / "article-6.1.ipvt", "-o", out).returncode == 0
    r = run_cli("merge", out, ARTICLE, "-o", tmp_path / "again.ipvt")
    assert r.returncode == 2 and "already a merged file" in r.stderr
    r = run_cli("replay", out, "--pcapng", tmp_path / "x.pcapng")
    assert r.returncode == 2 and "not a merged file" in r.stderr


def _merged_bytes(tmp_path) -> bytes:
    out = tmp_path / "good.ipvt"
    run_merge([ARTICLE, FIX / "article-6.1.ipvt"], out, ["x", "y"])
    return out.read_bytes()


def test_a_malformed_merged_file_is_one_clear_error(tmp_path):
    good = _merged_bytes(tmp_path)
    fixed = len(merged.MAGIC) + 2 + merged.HEAD.size
    (hlen,) = merged.HEAD.unpack_from(good, len(merged.MAGIC) + 2)
    header = json.loads(good[fixed:fixed + hlen])

    def with_header(h) -> bytes:
        raw = json.dumps(h).encode()
        return good[:len(merged.MAGIC) + 2] + merged.HEAD.pack(len(raw)) + raw + good[fixed + hlen:]

    bad = {
        "cut in the magic": good[:5],
        "cut in the header": good[:fixed + 3],
        "cut in a node": good[:len(good) - 100],
        "bytes after": good + b"x",
        "header not JSON": good[:fixed] + b"{" * hlen + good[fixed + hlen:],
        "huge header": good[:len(merged.MAGIC) + 2] + merged.HEAD.pack(2**32 - 1) + good[fixed:],
        "one node": with_header(dict(header, nodes=header["nodes"][:1])),
        "a node twice": with_header(dict(header, nodes=[header["nodes"][0]] * 2)),
        "negative size": with_header(dict(header, nodes=[dict(header["nodes"][0], bytes=-1),
                                                         header["nodes"][1]])),
        "size not int": with_header(dict(header, nodes=[dict(header["nodes"][0], bytes="9"),
                                                        header["nodes"][1]])),
        "sizes swapped": with_header(dict(header, nodes=[dict(header["nodes"][0], bytes=header["nodes"][1]["bytes"]),
                                                         dict(header["nodes"][1], bytes=header["nodes"][0]["bytes"])])),
        "name with a newline": with_header(dict(header, nodes=[dict(header["nodes"][0], name="a\nb"),
                                                               header["nodes"][1]])),
        "clock not an object": with_header(dict(header, clock=[])),
        "version 9": good[:len(merged.MAGIC)] + struct.pack("<H", 9) + good[len(merged.MAGIC) + 2:],
    }
    for what, data in bad.items():
        p = tmp_path / "bad.ipvt"
        p.write_bytes(data)
        with pytest.raises(RecordingError) as exc:
            replay_merged(p, None)
        assert "\n" not in str(exc.value), what
        r = run_cli("replay", p)
        assert r.returncode == 2 and r.stderr.startswith("ipvtrace: error:"), (what, r.stderr[-300:])
        assert "Traceback" not in r.stderr, what


TWO = {m: (FIX / f"two-nodes-{m}-a.ipvt", FIX / f"two-nodes-{m}-b.ipvt") for m in ("l2", "l3")}


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_real_two_node_recordings_merge_into_each_packets_path(mode, tmp_path):
    """The recordings Debian 6.1 (node-a) and 6.12 (node-b) made, joined by a
    wire: every packet across is joined, the dropped flow is shown lost."""
    out = tmp_path / "both.ipvt"
    summary = run_merge(list(TWO[mode]), out, ["node-a", "node-b"])
    rows: list = []
    replay_merged(out, rows.append)
    flows = json.loads((FIX / "two-nodes-flows.json").read_text())
    check_merged(rows, flows, mode, summary)
    assert summary["crossings"]["node-a -> node-b"]["lost"] == 3   # the flow a's wire drops
    check_text(run_cli("replay", out).stdout, rows)


def test_a_node_that_skipped_a_hit_leaves_the_dropped_flow_not_known(tmp_path):
    """Recorded by the CI's two guests: node-b's kernel skipped one
    consume_skb hit (a BPF program held the CPU) while the three packets
    a's wire drops were on their way. Nothing says whether they arrived: the
    merge says not known, in --json and in the text, never lost."""
    a, b = FIX / "two-nodes-l2-skip-a.ipvt", FIX / "two-nodes-l2-skip-b.ipvt"
    out = tmp_path / "both.ipvt"
    summary = run_merge([a, b], out, ["node-a", "node-b"])
    assert recording.read(b).trailer["kernel_stats"] == {"skipped.consume_skb": 1}
    assert summary["lost_events"] == {"node-a": 0, "node-b": 1}
    assert summary["crossings"]["node-a -> node-b"] == {"arrived": 19, "lost": 0, "unknown": 3}
    rows: list = []
    replay_merged(out, rows.append)
    flows = json.loads((FIX / "two-nodes-flows.json").read_text())
    check_merged(rows, flows, "l2", summary)
    text = run_cli("replay", out).stdout
    check_text(text, rows)
    assert "never reached" not in text


def test_a_loss_marked_before_the_packet_it_lost_leaves_that_packet_not_known(tmp_path):
    """Recorded by the CI's two guests (2026-12-03, failed there): node-b's
    kretprobe on ipvlan_handle_frame missed once, as node-a's first echo
    request arrived (node-b's reply to it is there, incomplete). Its
    recorder stamped the loss with the clock read before the tick's poll:
    191 ms before the request left node-a. The merge says that request is
    not known, not lost; the three packets a's wire drops stay lost."""
    a, b = FIX / "two-nodes-l2-early-mark-a.ipvt", FIX / "two-nodes-l2-early-mark-b.ipvt"
    out = tmp_path / "both.ipvt"
    summary = run_merge([a, b], out, ["node-a", "node-b"])
    assert recording.read(b).trailer["kernel_stats"] == {"kept_out": 1,
                                                          "kprobe_missed.rx_ret": 1}
    assert summary["crossings"]["node-a -> node-b"] == {"arrived": 18, "lost": 3, "unknown": 1}
    rows: list = []
    replay_merged(out, rows.append)
    flows = json.loads((FIX / "two-nodes-flows.json").read_text())
    check_merged(rows, flows, "l2", summary)
    first = [r for r in rows if r["node"] == "node-a" and r["kind"] == "echo-request"
             and r["dst"] == "10.99.0.21" and r["summary"].endswith(" seq 1")]
    assert [r["crossing"]["arrived"] for r in first] == [None]
    check_text(run_cli("replay", out).stdout, rows)


def test_replay_of_a_merged_file_selects_a_node(tmp_path):
    out = tmp_path / "both.ipvt"
    run_merge(list(TWO["l2"]), out, ["node-a", "node-b"])
    r = run_cli("replay", out, "--json", "--node", "node-b", "icmp")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and {x["node"] for x in rows} == {"node-b"} and {x["proto"] for x in rows} == {"icmp"}
    r = run_cli("replay", ARTICLE, "--node", "node-b")
    assert r.returncode == 2 and "takes a merged file" in r.stderr
