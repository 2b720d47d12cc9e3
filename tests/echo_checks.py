"""A frame ipvlan forwards to its parent, traced as two contexts: the
sender's TX (ipvlan_queue_xmit, dev_forward_skb into the parent's backlog)
and the parent's RX of it (ipvlan_handle_frame). Shared by the in-guest RPS
test (tests/guest/test_rps.py), which makes the RX run on another CPU, and
the replay test of the recording it made (tests/test_echo_fixture.py)."""
from pathlib import Path

from ipvtrace.model import layout
from ipvtrace.model.decode import Decoder
from ipvtrace.output import recording

POD_IP, PARENT_IP = "192.168.100.101", "192.168.100.1"   # scenarios.L2: pod node1ns, the parent
SENT = 10000   # the datagrams test_rps sends (the kept recording, tests/fixtures/rps-6.12.ipvt, too)


def early_echoes(path: Path) -> int:
    """How many RX records of a to-parent frame (flagged IPVT_F_ECHO by the
    kernel) come before their TX record in the file: the parent's RX closed
    while the sender was still inside ipvlan_queue_xmit. Read from the
    records in the order the ring gave them, not from the rows."""
    rec = recording.read(path)
    lay = layout.Layout.from_json(rec.header["layout"])
    echo = lay.flags["echo"]
    dec = Decoder(lay)
    open_tx: set[tuple[int, int]] = set()   # TX records whose RX has not come yet
    early_rx: set[tuple[int, int]] = set()  # RX records whose TX has not come yet
    early = 0
    for ftype, raw in rec.frames():
        if ftype != recording.F_EVENT:   # (a RING frame's records come one by one)
            continue
        evs = dec.events(raw)
        key = (evs[0].skb, evs[0].head)   # (the allocator reuses both: pairs are taken off)
        if evs[0].probe == "xmit" and any(e.probe == "fwd" for e in evs):
            if key in early_rx:
                early_rx.remove(key)
            else:
                open_tx.add(key)
        elif evs[0].probe == "rx" and evs[0].flags & echo:
            if key in open_tx:
                open_tx.remove(key)
            else:
                early_rx.add(key)
                early += 1
    return early


def check_to_parent_rows(rows: list[dict], sent: int, tx_cpu: int, rx_cpu: int,
                         kept_out: int = 0) -> list[dict]:
    """Each of the *sent* UDP datagrams from the pod to the parent's address
    is one tx.l2.to_parent row, complete but for the *kept_out* RX contexts
    the kernel flagged (opened inside another program's run: exactly that
    many rows incomplete). A delivered one's events hold both
    contexts: the TX on *tx_cpu*, then the parent's RX of the same skb on
    *rx_cpu*; one the parent's backlog refused (forward_failed) has no RX.
    No frame is a row of its own on the parent's side. The delivered rows."""
    flow = [r for r in rows if r["proto"] == "udp" and r["src"] == POD_IP
            and r["dst"] == PARENT_IP]
    assert len(flow) == sent, (len(flow), sent)
    bad = [r for r in flow if r["branch"] != "tx.l2.to_parent"]
    assert not bad, [(r["branch"], r["complete"], r["why"]) for r in bad[:3]]
    incomplete = [r for r in flow if not r["complete"]]
    assert len(incomplete) == kept_out, ([r["why"] for r in incomplete[:3]], kept_out)
    delivered = [r for r in flow if r["delivery"] == "delivered"]
    refused = [r for r in flow if r["delivery"] == "forward_failed"]
    assert len(delivered) + len(refused) == sent, {r["delivery"] for r in flow}
    assert not any(e["probe"] == "rx" for r in refused for e in r["events"]), refused[:1]
    # (a backlog that refused most would leave little to check)
    assert len(delivered) > sent // 2, (len(delivered), len(refused))
    for r in delivered:
        ev = {e["probe"]: e for e in r["events"]}
        assert ev["xmit"]["cpu"] == tx_cpu and ev["rx"]["cpu"] == rx_cpu, r["events"]
        assert ev["rx"]["skb"] == ev["xmit"]["skb"], r["events"]
        assert ev["rx"]["dev"].startswith("ens10@"), r["events"]
    return delivered
