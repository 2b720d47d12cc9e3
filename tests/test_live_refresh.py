"""A device that appears while tracing is read by another thread: the ring's
consumer goes on, records that need the device wait (with everything behind
them, ticks and loss marks included) and reach the file and the classifier
in the order the ring gave them, after the snapshot that names the device.
Replay of that file prints what live printed."""
import struct
import threading
import time

from ipvtrace import live, replay
from ipvtrace.capture import snapshot
from ipvtrace.model.decode import field_offsets
from ipvtrace.model.layout import current
from ipvtrace.output import recording

import synth
from synth import HOST, POD_A, ipv4_icmp, pod_a, pod_b, raw

POD_C = POD_A + 100


def start_snapshot() -> dict:
    """The node at the start: pod-c does not exist yet."""
    return synth.snapshot("l2")


def pod_c_snapshot() -> dict:
    return {"namespaces": [{"inum": POD_C, "name": "pod-c", "root": False}],
            "devices": [{"netns": POD_C, "ifindex": 3, "name": "eth0", "kind": "ipvlan",
                         "link": 2, "link_netns": HOST, "ipvlan": {"mode": "l2", "flags": []}}],
            "errors": []}


def packet(ts: int, ctx: int, src: dict, dst: dict, a: str, b: str, skb: int) -> list[bytes]:
    """One pod-to-pod echo request, as the kernel's format-3 record."""
    entry = raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=ipv4_icmp(a, b), **src)
    hits = [raw("lookup_ret", ts + 1, ctx, aux=0xA, aux2=0xB, **dst),
            raw("rcv_frame", ts + 2, ctx, skb=skb, head=skb + 1, aux2=0xB, flags=1),
            raw("fwd", ts + 3, ctx, skb=skb, head=skb + 1, **dst),
            raw("fwd_ret", ts + 4, ctx, ret=0)]
    return [synth.context(entry, hits, raw("xmit_ret", ts + 5, ctx, ret=0))]


POD_C_DEV = dict(netns=POD_C, ifindex=3, ifname="eth0")


def live_stream(out, monkeypatch, take_netns, sink) -> tuple[recording.Writer, live._LiveStream]:
    """A live stream writing *out*, started on a node without pod-c, whose
    netlink reads of a new namespace are *take_netns*."""
    snap0 = start_snapshot()
    monkeypatch.setattr(snapshot, "take", lambda: snap0)
    monkeypatch.setattr(snapshot, "take_netns", take_netns)
    lay = current()
    w = recording.Writer(out, {"format": "ipvtrace-recording", "format_version": 1,
                               "start_ktime": 0, "layout": lay.to_json(),
                               "drop_reasons": {}, "snapshot": snap0})
    src = live._LiveStream(lay, w, snap0, {}, 0, sink)
    src.kallsyms.resolve = lambda addr: None
    return w, src


def test_a_new_pods_read_does_not_stall_the_consumer(tmp_path, monkeypatch):
    asked: list[int] = []
    release, reading = threading.Event(), threading.Event()

    def take_netns(inum, known):
        asked.append(inum)
        reading.set()
        assert release.wait(10), "the test never released the read"
        return pod_c_snapshot()

    out = tmp_path / "churn.ipvt"
    rows: list[dict] = []
    w, src = live_stream(out, monkeypatch, take_netns, rows.append)
    lay = current()

    # a known pod's packet goes straight through
    for r in packet(1_000, 1, pod_a(), pod_b(), "10.0.0.1", "10.0.0.2", 0x10):
        src.raw(r)
    src.tick(10_000, {}, 10_000)
    assert w.events == 1
    # pod-c's first packet: its namespace is asked for, the consumer goes on
    t = time.monotonic()
    for r in packet(20_000, 2, POD_C_DEV, pod_b(), "10.0.0.3", "10.0.0.2", 0x20):
        src.raw(r)
    # what follows it, even of known devices, waits behind it, in order
    for r in packet(30_000, 3, pod_a(), pod_b(), "10.0.0.1", "10.0.0.2", 0x30):
        src.raw(r)
    src.tick(40_000, {"lost.xmit": 2}, 45_000)   # the counters read at 45,000
    assert time.monotonic() - t < 5, "raw() waited for the netlink read"
    assert reading.wait(10) and asked == [POD_C]
    assert w.events == 1 and rows and len(rows) == 1, "held records were written early"
    release.set()
    src.settle()
    src.check()
    summary = src.close("SIGINT", {"lost.xmit": 2})
    assert summary["refreshes"] == 1 and summary["refresh_held_max"] >= 3

    rec = recording.read(out)
    kinds = []
    for ftype, payload in rec.frames():
        if ftype == recording.F_EVENT:
            netns = struct.unpack_from("<I", payload, field_offsets(lay.fields, lay.fmt)["netns"])[0]
            kinds.append(("event", {POD_A: "a", POD_C: "c"}[netns]))
        elif ftype == recording.F_SNAPSHOT:
            kinds.append(("snapshot", [d["name"] for d in payload["devices"]]))
        elif ftype == recording.F_TICK:
            kinds.append(("tick",))
        elif ftype == recording.F_LOST:
            kinds.append(("lost",))
            # marked when the counters that showed it were read: the loss
            # happened before then (crossnode's window counts on that)
            assert recording.LOST.unpack(payload) == (45_000, 2)
    # the snapshot that names pod-c before pod-c's record; ticks and the
    # loss mark after the records the ring gave before them
    assert kinds[:6] == [("event", "a"), ("tick",), ("snapshot", ["eth0"]), ("event", "c"),
                         ("event", "a"), ("lost",)], kinds
    assert kinds[6] == ("tick",)
    named = [r for r in rows if r["src"] == "10.0.0.3"]
    assert named and "pod-c" in str(named[0]), named
    replayed: list[dict] = []
    replay.run_replay(out, replayed.append)
    assert replayed == rows


def test_a_full_hold_makes_the_consumer_wait_for_the_read(tmp_path, monkeypatch):
    """Memory stays bounded: past the hold's size the consumer waits for the
    read (as it did when reads ran inline), and nothing is reordered."""
    monkeypatch.setattr(live, "HOLD_MAX_BYTES", 1)

    def take_netns(inum, known):
        time.sleep(0.3)
        return pod_c_snapshot()

    out = tmp_path / "full.ipvt"
    w, src = live_stream(out, monkeypatch, take_netns, None)
    t = time.monotonic()
    for r in packet(20_000, 2, POD_C_DEV, pod_b(), "10.0.0.3", "10.0.0.2", 0x20):
        src.raw(r)
    assert time.monotonic() - t >= 0.25 and w.events == 1
    assert src.hold_waits == 1
    src.check()
    src.close("SIGINT", {})
    frames = [f for f, _ in recording.read(out).frames()]
    assert frames == [recording.F_SNAPSHOT, recording.F_EVENT, recording.F_SNAPSHOT]
