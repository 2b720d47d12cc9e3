"""Live and replay share every stage after the event source: the rows a live
session prints and the rows its recording replays to are the same."""
import io

from rich.console import Console

from ipvtrace import live, replay
from ipvtrace.capture import snapshot
from ipvtrace.model.layout import current
from ipvtrace.output.render import LineSink

import synth
from synth import BCAST, ipv4_icmp, parent, pod_a, pod_b, raw


def stream():
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.2")
    arp = BCAST + synth.MAC + b"\x08\x06" + bytes(28)
    yield raw("xmit", 1_000, 1, skb=0x10, head=0x11, hdr=hdr, **pod_a())
    yield raw("lookup_ret", 1_001, 1, aux=0xA, aux2=0xB, **pod_b())
    yield raw("rcv_frame", 1_002, 1, skb=0x10, head=0x11, aux2=0xB, flags=1)
    yield raw("fwd", 1_003, 1, skb=0x10, head=0x11, **pod_b())
    yield raw("fwd_ret", 1_004, 1, ret=0)
    yield raw("xmit_ret", 1_005, 1, ret=0)
    yield 50_000
    yield raw("xmit", 60_000, 2, skb=0x20, head=0x21, hdr=arp, **pod_a())
    yield raw("mc_enqueue", 60_001, 2, skb=0x20, head=0x21, flags=1, **pod_a())
    yield raw("xmit_ret", 60_002, 2, ret=0)
    yield ("lost", 3)
    yield 65_000          # the poll loop notices the loss at its next tick
    yield raw("mc_work", 70_000, 9, cpu=1, flags=2)
    yield raw("fwd", 70_001, 9, cpu=1, skb=0x30, head=0x21, flags=2, **pod_b())
    yield raw("fwd_ret", 70_002, 9, cpu=1, ret=0)
    yield raw("qxmit", 70_003, 9, cpu=1, skb=0x20, head=0x21, flags=2, **parent())
    # the worker run lost an event (the ring was full): the kernel flags its return
    yield raw("mc_work_ret", 70_004, 9, cpu=1, flags=2 | synth.F["lost"])
    yield raw("kfree", 80_000, 3, skb=0x40, aux=0xffffffff81000010, reason=2)
    yield 90_000


def test_live_rows_equal_replay_rows(tmp_path, monkeypatch):
    snap = synth.snapshot("l2")
    monkeypatch.setattr(snapshot, "take", lambda: snap)
    out = tmp_path / "t.ipvt"
    lay = current()
    live_rows, live_text = [], io.StringIO()
    live_sink = LineSink(Console(file=live_text, width=200, color_system=None), why=True)
    from ipvtrace.output import recording

    writer = recording.Writer(out, {"format": "ipvtrace-recording", "format_version": 1,
                                    "start_ktime": 0, "layout": lay.to_json(),
                                    "drop_reasons": {"2": "NOT_SPECIFIED"}, "snapshot": snap})
    src = live._LiveStream(lay, writer, snap, {2: "NOT_SPECIFIED"}, 0,
                              lambda row: (live_rows.append(row), live_sink(row)))
    src.kallsyms.resolve = lambda addr: "ipvlan_queue_xmit+0x10"
    lost = 0
    for item in stream():
        if isinstance(item, bytes):
            src.raw(item)
        elif isinstance(item, tuple):
            lost += item[1]
        else:
            src.tick(item, {"lost.xmit": lost}, item)
    src.check()
    summary = src.close("SIGINT", {"lost.xmit": lost})
    assert summary["packets"] == len(live_rows) == 2

    replay_rows, replay_text = [], io.StringIO()
    replay_sink = LineSink(Console(file=replay_text, width=200, color_system=None), why=True)
    replay.run_replay(out, lambda row: (replay_rows.append(row), replay_sink(row)))
    assert replay_rows == live_rows
    assert replay_text.getvalue() == live_text.getvalue()
    branches = [r["branch"] for r in live_rows]
    assert branches == ["tx.l2.local", "tx.l2.multicast"]
    # the event its worker run lost shows; the packet before it lost nothing
    assert live_rows[1]["complete"] is False
    assert live_rows[0]["complete"] is True


def test_record_only_path_writes_the_same_file(tmp_path, monkeypatch):
    """`record` skips classification (fast path): its file replays to the
    same rows as one written while classifying."""
    snap = synth.snapshot("l2")
    monkeypatch.setattr(snapshot, "take", lambda: snap)
    lay = current()
    from ipvtrace.output import recording

    outs = []
    for sink in (lambda row: None, None):
        out = tmp_path / f"{'live' if sink else 'record'}.ipvt"
        w = recording.Writer(out, {"format": "ipvtrace-recording", "format_version": 1,
                                   "start_ktime": 0, "layout": lay.to_json(),
                                   "drop_reasons": {}, "snapshot": snap})
        src = live._LiveStream(lay, w, snap, {}, 0, sink)
        src.kallsyms.resolve = lambda addr: "ipvlan_queue_xmit+0x10"
        for item in stream():
            if isinstance(item, bytes):
                src.raw(item)
            elif isinstance(item, int):
                src.tick(item, {}, item)
        if sink is None:   # record: the kernel's free_sites map says where frees were
            src.name_free_sites([0xffffffff81000010])
        src.check()
        src.close("SIGINT", {})
        outs.append(out)
    rows = []
    for out in outs:
        got = []
        replay.run_replay(out, got.append)
        rows.append(got)
    assert rows[0] == rows[1] and len(rows[0]) == 2
    assert recording.read(outs[1]).trailer["symbols"] == {"0xffffffff81000010": "ipvlan_queue_xmit+0x10"}


def test_record_keeps_row_filters_for_replay(tmp_path, monkeypatch):
    """`record --branch ...` keeps every event but stores the filter; replay
    (through the CLI) shows only the matching rows."""
    import json
    import subprocess
    import sys

    snap = synth.snapshot("l2")
    monkeypatch.setattr(snapshot, "take", lambda: snap)
    lay = current()
    from ipvtrace.output import recording

    out = tmp_path / "f.ipvt"
    w = recording.Writer(out, {"format": "ipvtrace-recording", "format_version": 1,
                               "start_ktime": 0, "layout": lay.to_json(), "drop_reasons": {},
                               "snapshot": snap, "row_filters": {"branch": ["tx.l2.multicast"]}})
    src = live._LiveStream(lay, w, snap, {}, 0, None)
    src.kallsyms.resolve = lambda addr: None
    for item in stream():
        if isinstance(item, bytes):
            src.raw(item)
        elif isinstance(item, int):
            src.tick(item, {}, item)
    src.close("SIGINT", {})
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", "--json", str(out)],
                       capture_output=True, text=True, check=True)
    assert [json.loads(l)["branch"] for l in r.stdout.splitlines()] == ["tx.l2.multicast"]
