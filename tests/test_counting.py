"""Stats mode: signatures as the kernel keys them -> branches (fast, no kernel).

The signature bytes are packed with the layout parsed from bpf/ipvtrace.h and
named by the same classifier live and replay use; tests/guest/test_stats.py
checks on real kernels that these counts equal what `record` saw."""
import struct

from ipvtrace.model import classify, counting, layout
from ipvtrace.model.topology import Topology

from synth import HOST, POD_A, POD_B, F, snapshot

SL = layout.sig_layout()
PID = {v: k for k, v in SL.probes.items()}


def sig(kind: str, seen=(), hflags=(), **kw) -> counting.Signature:
    vals = {f: 0 for f in SL.fields}
    vals["kind"] = PID[kind]
    vals["seen"] = sum(1 << PID[p] for p in seen)
    vals["hflags"] = sum(SL.hflags[h] for h in hflags)
    vals.update(kw)
    return counting.decode(struct.pack(SL.fmt, *(vals[f] for f in SL.fields)), SL)


def ctx(mode: str) -> classify.Context:
    return classify.Context(topo=Topology.from_snapshots([snapshot(mode)]), flags=F)


POD_A_DEV = dict(netns=POD_A, ifindex=3)


def test_decode_reads_the_header_layout():
    s = sig("xmit", seen=("fwd", "fwd_ret"), hflags=("found",), ret=-1, etype=0x0800, l4=17,
            **POD_A_DEV)
    assert (s.kind, s.seen, s.hflags) == ("xmit", {"fwd", "fwd_ret"}, {"found"})
    assert (s.ret, s.etype, s.l4, s.netns, s.ifindex) == (-1, 0x0800, 17, POD_A, 3)


def test_local_delivery_names_both_ends():
    s = sig("xmit", seen=("lookup_ret", "rcv_frame", "fwd", "fwd_ret"), hflags=("found",),
            own_netns=POD_B, own_ifindex=3, to_netns=POD_B, to_ifindex=3, etype=0x0800, l4=1,
            **POD_A_DEV)
    [o] = counting.outcomes(s, ctx("l2"))
    assert (o.branch, o.delivery, o.frm, o.to) == ("tx.l2.local", "delivered", "eth0@pod-a",
                                                   "eth0@pod-b")


def test_forward_failure_is_not_delivery():
    s = sig("xmit", seen=("lookup_ret", "rcv_frame", "fwd", "fwd_ret"), hflags=("found",),
            fwd_ret=1, etype=0x0800, **POD_A_DEV)
    assert counting.outcomes(s, ctx("l2"))[0].delivery == "forward_failed"


def test_private_drop_needs_the_entry_skb_consumed():
    base = dict(seen=("lookup_ret", "consume"), ret=1, etype=0x0800, **POD_A_DEV)
    own = sig("xmit", hflags=("found", "consume_own"), **base)
    other = sig("xmit", hflags=("found",), **base)
    assert counting.outcomes(own, ctx("l2"))[0].branch == "tx.l2.private_drop"
    assert counting.outcomes(other, ctx("l2"))[0].branch != "tx.l2.private_drop"


def test_l3_drops_by_frame_kind():
    drop = dict(seen=("kfree",), ret=1, **POD_A_DEV)
    c = ctx("l3")
    assert counting.outcomes(sig("xmit", etype=0x88B5, **drop), c)[0].branch == "tx.l3.non_ip_drop"
    assert counting.outcomes(sig("xmit", etype=0x0800, hflags=("dst_mcast",), **drop),
                             c)[0].branch == "tx.l3.mcast_drop"
    assert counting.outcomes(sig("xmit", etype=0x0800, l4=1, **drop), c)[0].branch == "tx.l3.route_fail"


def test_echo_of_a_to_parent_frame_is_not_another_packet():
    s = sig("rx", hflags=("echo",), ret=3, etype=0x0800, netns=HOST, ifindex=2)
    assert counting.outcomes(s, ctx("l2")) == []


def test_worker_delivery_and_send_out():
    c = ctx("l2")
    [d] = counting.outcomes(sig("mc_work", seen=("fwd",), to_netns=POD_B, to_ifindex=3), c)
    [o] = counting.outcomes(sig("mc_work", seen=("qxmit",), to_netns=HOST, to_ifindex=2), c)
    assert (d.branch, d.to) == ("mcast.deliver", "eth0@pod-b")
    assert (o.branch, o.to) == ("mcast.out_parent", "ens10@host")


def test_l3s_local_frames_move_out_of_to_host():
    """The rx_handler passes every L3S frame (counted as to_host); those a
    slave got at LOCAL_IN are counted again by kind l3_rcv: moved, not doubled."""
    c = ctx("l3s")
    passed = sig("rx", ret=3, etype=0x0800, l4=1, netns=HOST, ifindex=2)
    local = sig("l3_rcv", seen=("nf_input",), hflags=("found",), netns=HOST, ifindex=2,
                own_netns=POD_B, own_ifindex=3)
    rows = counting.Tally(c).rows({passed: 5, local: 3})
    by = {(o.branch, o.to): n for o, n in rows.items()}
    assert by == {("rx.l3s.to_host", "ens10@host"): 2, ("rx.l3s.local", "eth0@pod-b"): 3}


def test_tally_names_each_signature_once_and_counts_sum():
    c = ctx("l2")
    s = sig("xmit", seen=("qxmit",), hflags=("own_qx",), etype=0x0800, to_netns=HOST,
            to_ifindex=2, **POD_A_DEV)
    t = counting.Tally(c)
    assert sum(t.rows({s: 7}).values()) == 7
    assert len(t._named) == 1
    [(o, n)] = t.rows({s: 9}).items()
    assert (o.branch, o.to, n) == ("tx.l2.out_parent", "ens10@host", 9)


def test_unknown_device_asks_for_a_new_snapshot():
    t = counting.Tally(ctx("l2"))
    assert not t.unknown_devices({sig("xmit", **POD_A_DEV): 1})
    assert t.unknown_devices({sig("xmit", netns=POD_A, ifindex=77): 1})


def test_a_rcv_frame_clone_with_foreign_arguments_is_incomplete():
    """stats checks ipvlan_rcv_frame.isra's arguments in the kernel (its skb
    is the context's, its slave the lookup's); a failed check comes as a bit
    of the signature (IPVT_C_CLONE_ARGS) and names the packet incomplete, as
    replay does with the same evidence."""
    base = dict(seen=("lookup_ret", "rcv_frame", "fwd", "fwd_ret"), hflags=("found",),
                own_netns=POD_B, own_ifindex=3, to_netns=POD_B, to_ifindex=3, etype=0x0800,
                l4=1, **POD_A_DEV)
    c = ctx("l2")
    for checks, complete in ((0, True), (SL.checks["clone_args"], False)):
        s = sig("xmit", checks=checks, **base)
        assert ("clone_mismatch" in s.hflags) == (not complete)
        v = classify.classify(counting.evidence_of(s, c))
        assert (v.branch, v.complete) == ("tx.l2.local", complete)


def test_a_context_whose_record_was_full_is_incomplete():
    """stats gathers a context's hits in the same record `record` sends; a
    record that had no room for a hit (IPVT_C_LOST in the signature) is
    counted, but as an incomplete packet, as replay names a record flagged
    IPVT_F_LOST: never a branch from part of the evidence."""
    base = dict(seen=("lookup_ret", "rcv_frame", "fwd", "fwd_ret"), hflags=("found",),
                own_netns=POD_B, own_ifindex=3, to_netns=POD_B, to_ifindex=3, etype=0x0800,
                l4=1, **POD_A_DEV)
    c = ctx("l2")
    lost = SL.checks["lost"]
    assert lost and lost != SL.checks["clone_args"]
    for checks, complete in ((0, True), (lost, False)):
        s = sig("xmit", checks=checks, **base)
        assert ("lost" in s.hflags) == (not complete)
        v = classify.classify(counting.evidence_of(s, c))
        assert (v.branch, v.complete) == ("tx.l2.local", complete)


def test_a_parent_read_before_its_slaves_asks_for_the_node_again():
    """A parent read before its first slave existed (or while that slave moved
    into its pod's namespace) is a device with no port: its rx_handler's frames
    cannot be named by mode (an L3S port's frames would come out rx.to_host),
    so stats reads the node again; once a slave ties it, nothing is asked."""
    bare = snapshot("l3s")
    bare["devices"] = bare["devices"][:1]          # only the parent so far
    c = classify.Context(topo=Topology.from_snapshots([bare]), flags=F)
    t = counting.Tally(c)
    passed = sig("rx", ret=3, etype=0x0800, l4=1, netns=HOST, ifindex=2)
    assert t.unknown_devices({passed: 1}) == set()
    assert t.portless_parents({passed: 1}) == {(HOST, 2)}
    c.topo.add(snapshot("l3s"))
    t.forget_names()
    assert t.portless_parents({passed: 1}) == set()
    [(o, n)] = t.rows({passed: 1}).items()
    assert (o.branch, n) == ("rx.l3s.to_host", 1)
