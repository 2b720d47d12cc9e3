"""What a user checks in a merged replay of the two-node test: each packet a
pod of node-a sent to a pod of node-b left a's ipvlan port by the mode's
branch and is followed by its arrival at b (rx.local, delivered to the pod),
every answer the other way too, and the flow the wire dropped left a and
never reached b. Where a node's recording lost evidence (its kernel skipped
probe hits: a softirq ran inside another probe's program), a packet may be
missing from its rows: then, and only then, the merge may say "not known"
(`arrived: null`) instead of arrived — never "lost". Shared by the guest run (tests/test_two_nodes.py) and the
replay of the kept recordings (tests/test_merge.py)."""
from __future__ import annotations

LEAVES = {"l2": "tx.l2.out_parent", "l3": "tx.l3.routed"}
REPLY = {"icmp": "echo-reply", "icmp6": "echo-reply"}


def _is(row: dict, node: str, direction: str, src: str, dst: str, proto: str) -> bool:
    return (row.get("node") == node and row["direction"] == direction and row["src"] == src
            and row["dst"] == dst and row["proto"] == proto)


def _port(row: dict, flow: dict, reply: bool) -> bool:
    if "dport" not in flow:
        return True
    return (row["sport"] if reply else row["dport"]) == flow["dport"]


def _count(n: int, want: int, lost: int) -> bool:
    """*want* rows, or fewer by at most what that node's recording lost."""
    return want - lost <= n <= want


def check_flow(rows: list[dict], flow: dict, lost: dict[str, int], a: str = "node-a",
               b: str = "node-b") -> None:
    mode, proto = flow["mode"], flow["proto"]
    sent = [i for i, r in enumerate(rows)
            if _is(r, a, "tx", flow["src"], flow["dst"], proto) and _port(r, flow, False)
            and (proto not in REPLY or r["kind"] == "echo-request")]
    what = f"{mode} {proto} {flow['src']} -> {flow['dst']}"
    if "count" in flow:
        assert _count(len(sent), flow["count"], lost[a]), \
            f"{what}: {len(sent)} rows on {a}, sent {flow['count']}, {lost[a]} lost there"
    else:
        assert len(sent) >= 3, f"{what}: {len(sent)} rows on {a} (a TCP exchange has more)"
    for i in sent:
        r = rows[i]
        assert r["branch"] == LEAVES[mode] and r["complete"], (what, r["branch"], r["why"])
        cx = r.get("crossing")
        assert cx and cx["from"] == a and cx["to"] == b and cx["at"] == "left", (what, cx)
        if cx["arrived"] is None:   # b's recording lost evidence then: not known
            assert lost[b], (what, r["time"], "not known, yet nothing lost at", b)
            continue
        if flow["expect"] == "lost":
            assert cx["arrived"] is False, (what, cx)
            continue
        assert cx["arrived"] is True, (what, r["time"], "never reached", b)
        nxt = rows[i + 1]
        assert nxt["node"] == b and nxt["crossing"]["id"] == cx["id"], (what, nxt)
        assert nxt["crossing"]["at"] == "arrived" and nxt["crossing"]["wire_s"] >= 0, nxt["crossing"]
        assert (nxt["branch"], nxt["delivery"]) == ("rx.local", "delivered"), (what, nxt["branch"])
        assert nxt["to"]["netns"] == "ipvt-pod1", (what, nxt["to"])
        assert (nxt["src"], nxt["dst"], nxt["proto"]) == (r["src"], r["dst"], r["proto"])
    if flow["expect"] == "lost":
        told = [rows[i]["crossing"]["arrived"] for i in sent]
        assert False in told or lost[b], (what, told)
        seen_at_b = [r for r in rows if r.get("node") == b and r["dst"] == flow["dst"]
                     and r["proto"] == proto and _port(r, flow, False)]
        assert not seen_at_b, f"{what}: dropped on the wire, yet {b} saw {len(seen_at_b)}"
        return
    assert flow["answered"], f"{what}: the pod got no answer while tracing"
    back = [i for i, r in enumerate(rows)
            if _is(r, b, "tx", flow["dst"], flow["src"], proto) and _port(r, flow, True)
            and (proto not in REPLY or r["kind"] == REPLY[proto])]
    assert len(back) >= flow.get("count", 1) - lost[b], f"{what}: {len(back)} answers on {b}"
    for i in back:
        r, nxt = rows[i], rows[i + 1]
        cx = r["crossing"]
        if cx["arrived"] is None:
            assert lost[a], (what, cx, "not known, yet nothing lost at", a)
            continue
        assert r["branch"] == LEAVES[mode] and cx["arrived"] is True, (what, cx)
        assert nxt["node"] == a and (nxt["branch"], nxt["delivery"]) == ("rx.local", "delivered")


def check_merged(rows: list[dict], flows: list[dict], mode: str, summary: dict) -> None:
    """*summary*: what `ipvtrace merge` printed (clocks, each node's lost evidence)."""
    ours = [f for f in flows if f["mode"] == mode]
    assert ours, f"no {mode} flows"
    clock, lost = summary["clock"], summary["lost_events"]
    for f in ours:
        check_flow(rows, f, lost)
    # the clocks were aligned from packets both ways, not from the wall clocks
    assert "both ways" in clock["node-b"]["from"], clock
    # every row is named by the catalogue; none from partial evidence
    for r in rows:
        if r["complete"]:
            assert r["branch"] != "unknown", r


def check_text(text: str, rows: list[dict], a: str = "node-a", b: str = "node-b") -> None:
    """The merged replay's text says of each packet from *a* to *b* what its
    `--json` row says: arrived (and b's row says from where), dropped on
    the way ("never reached"), or not known because b's recording lost
    evidence then — one line each."""
    left = [r["crossing"] for r in rows
            if (r.get("crossing") or {}).get("at") == "left" and r["crossing"]["from"] == a
            and r["crossing"]["to"] == b]
    never = sum(1 for cx in left if cx["arrived"] is False)
    unknown = sum(1 for cx in left if cx["arrived"] is None)
    arrived = sum(1 for cx in left if cx["arrived"] is True)
    assert text.count(f"-> never reached {b}") == never, (never, text[-2000:])
    assert text.count(f"-> {b}? (not seen there; its recording lost evidence then)") == unknown, \
        (unknown, text[-2000:])
    assert text.count(f"<- hop from {a} (") == arrived, (arrived, text[-2000:])
