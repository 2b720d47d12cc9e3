"""Format 3: an entry's context reaches user space as one record (struct
ipvt_rec: entry, frame, hits, return). The decoder turns it back into the
events format 2 sent one by one, so everything after it is unchanged; these
tests pin that equivalence and the record's checks. Real kernels send these
records in the guest tier and the fixtures made there."""
import dataclasses
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvtrace.model import classify
from ipvtrace.model.correlate import Correlator, correlate
from ipvtrace.model.decode import DecodeError
from ipvtrace.model.evidence import from_packet

import synth
from synth import BCAST, DEC, F, context, parent, pod_a, pod_b, raw
from test_correlate import CTX


def local_tx_raw(ctx_id, ts, skb, ret_flags=0):
    """pod-a -> pod-b, tx.l2.local, as format 2 sent it: entry, hits, return."""
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.2")
    entry = raw("xmit", ts, ctx_id, skb=skb, head=skb + 1, hdr=hdr, **pod_a())
    hits = [raw("lookup_ret", ts + 1, ctx_id, aux=0xA, aux2=0xB, **pod_b()),
            raw("rcv_frame", ts + 2, ctx_id, skb=skb, head=skb + 1, aux2=0xB, flags=1),
            raw("fwd", ts + 3, ctx_id, skb=skb, head=skb + 1, **pod_b()),
            raw("fwd_ret", ts + 4, ctx_id, ret=0)]
    ret = raw("xmit_ret", ts + 5, ctx_id, ret=0, flags=ret_flags)
    return entry, hits, ret


def test_a_context_record_decodes_into_its_events():
    entry, hits, ret = local_tx_raw(1, 1000, 0x1000)
    want = [DEC.decode(r) for r in [entry, *hits, ret]]
    got = DEC.events(context(entry, hits, ret))
    assert [dataclasses.astuple(e) for e in got] == [dataclasses.astuple(e) for e in want]
    assert got[0].hdr == synth.ipv4_icmp("10.0.0.1", "10.0.0.2")
    assert [e.probe for e in got] == ["xmit", "lookup_ret", "rcv_frame", "fwd", "fwd_ret",
                                      "xmit_ret"]


def test_the_frame_is_padded_to_8_and_hits_follow():
    entry, hits, ret = local_tx_raw(1, 1000, 0x1000)
    rec = context(entry, hits, ret)
    frame = synth.ipv4_icmp("10.0.0.1", "10.0.0.2")   # 42 bytes: 6 of padding
    assert len(frame) == 42
    assert len(rec) == synth.REC.size + 48 + 4 * synth.HIT.size
    assert rec[synth.REC.size:synth.REC.size + 48] == frame + bytes(6)


def test_records_classify_as_their_events_did():
    entry, hits, ret = local_tx_raw(1, 1000, 0x1000)
    [pkt] = list(correlate(DEC.events(context(entry, hits, ret))))
    v = classify.classify(from_packet(pkt, CTX))
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.local", "delivered", True)


def test_a_record_flagged_lost_is_incomplete_and_its_neighbour_is_not():
    lost = F["lost"]
    out = []
    c = Correlator(out.append, lost_flag=lost)
    for ctx_id, ts, flags in ((1, 1000, 0), (2, 2000, lost)):
        for e in DEC.events(context(*local_tx_raw(ctx_id, ts, ctx_id << 12, flags))):
            c.feed(e)
    c.flush()
    got = {p.entry.ctx: classify.classify(from_packet(p, CTX)).complete for p in out}
    assert got == {1: True, 2: False}
    assert not any(e.flags & lost for p in out for e in [p.entry, *p.helpers("fwd")])


def multicast_tx():
    hdr = BCAST + bytes.fromhex("020000000001") + b"\x08\x06" + bytes(28)
    return context(raw("xmit", 1000, 1, skb=0x5000, head=0x5001, hdr=hdr, **pod_a()),
                   [raw("mc_enqueue", 1001, 1, skb=0x5000, head=0x5001, flags=1, **pod_a())],
                   raw("xmit_ret", 1002, 1, ret=0))


def worker_run(start=1500):
    W = F["worker"]
    return [raw("mc_work", start, 99, cpu=1, flags=W, depth=0),
            raw("fwd", start + 1, 99, cpu=1, skb=0x6000, head=0x5001, flags=W, depth=0,
                **pod_b()),
            raw("fwd_ret", start + 2, 99, cpu=1, ret=0, depth=0),
            raw("kfree", start + 3, 99, cpu=1, skb=0x5000, flags=W, depth=0),
            raw("qxmit", start + 4, 99, cpu=1, skb=0x5000, head=0x5001, flags=W, depth=0,
                **parent()),
            raw("mc_work_ret", start + 5, 99, cpu=1, flags=W, depth=0)]


@pytest.mark.parametrize("order", ["record first", "worker first"])
def test_a_worker_run_that_ends_before_the_queuing_record_arrives(order):
    """The worker runs on another CPU as soon as the frame is queued; the
    queuing context's record comes when it returns, which can be after the
    run ended. Either order gives the packet the run's deliveries."""
    records = [multicast_tx(), *worker_run()]
    if order == "worker first":
        records = records[1:] + records[:1]
    out = []
    c = Correlator(out.append, lost_flag=F["lost"])
    for r in records:
        for e in DEC.events(r):
            c.feed(e)
    assert len(out) == 1, "the packet is finished as soon as both are in"
    c.flush()
    [pkt] = out
    v = classify.classify(from_packet(pkt, CTX))
    assert (v.branch, v.complete) == ("tx.l2.multicast", True)
    assert [(m["branch"], m["to"]["netns"]) for m in v.mcast] == [
        ("mcast.deliver", "pod-b"), ("mcast.out_parent", "host")]
    assert [e.probe for e in pkt.worker] == ["fwd", "fwd_ret", "kfree", "qxmit"]
    assert c.unattributed == 0


def test_a_run_for_an_older_use_of_the_head_is_not_taken():
    """Parked shares go only to a packet queued before the run touched the
    frame: a run that ran before this packet's enqueue handled another frame
    whose memory this one reuses."""
    out = []
    c = Correlator(out.append, lost_flag=F["lost"], wait_ns=10_000)
    for r in [*worker_run(start=500), multicast_tx()]:
        for e in DEC.events(r):
            c.feed(e)
    c.flush()
    [pkt] = out
    assert pkt.worker == [] and not pkt.worker_done
    assert c.unattributed == 4


@pytest.mark.parametrize("mangle, words", [
    (lambda r: r[:-1], "context record of"),
    (lambda r: r + bytes(8), "context record of"),
    (lambda r: r[:90], "context record of 90 bytes"),
    (lambda r: r[:36] + (77).to_bytes(4, "little") + r[40:], "unknown kind 77"),
])
def test_a_malformed_record_is_a_decode_error(mangle, words):
    rec = context(*local_tx_raw(1, 1000, 0x1000))
    with pytest.raises(DecodeError, match=words):
        DEC.events(mangle(rec))


def test_a_hit_of_an_unknown_probe_is_a_decode_error():
    rec = bytearray(context(*local_tx_raw(1, 1000, 0x1000)))
    at = synth.REC.size + 48 + 60    # the first hit's probe field
    rec[at:at + 2] = (999).to_bytes(2, "little")
    with pytest.raises(DecodeError, match="unknown probe id 999"):
        DEC.events(bytes(rec))


FUZZ = settings(max_examples=int(os.environ.get("IPVTRACE_FUZZ_EXAMPLES", "150")),
                deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.data())
def test_any_bytes_of_a_context_record_decode_or_fail_in_one_error(data):
    """A record from a stranger's file: flipped, cut or grown anywhere, it
    decodes into events or raises DecodeError (one line), nothing else."""
    rec = bytearray(context(*local_tx_raw(1, 1000, 0x1000)))
    for _ in range(data.draw(st.integers(0, 6))):
        at = data.draw(st.integers(0, len(rec) - 1))
        if at in (80, 81):
            continue   # the probe id: without it this is no context record
        rec[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(rec)))
    rec = rec[:cut] + bytes(data.draw(st.integers(0, 1)) * data.draw(st.integers(0, 96)))
    try:
        evs = DEC.events(bytes(rec))
    except DecodeError:
        return
    assert evs[0].probe in ("xmit", "rx") and evs[-1].probe == evs[0].probe + "_ret"
