"""`ipvtrace merge` and the replay of a merged file: several nodes'
recordings, one story per packet across them.

Each node's recording goes through the one replay pipeline unchanged; the
join (model/crossnode.py) only reads the rows it printed and the identity of
each packet's frame, and adds `node`, the merged clock's `time` and, for a
packet that crossed between nodes, `crossing`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ipvtrace.model import crossnode, identity
from ipvtrace.model.layout import current
from ipvtrace.model.pipeline import Row
from ipvtrace.output import merged, recording
from ipvtrace.replay import replay_recording


@dataclass
class NodeRows:
    name: str
    rows: list[Row]
    seen: list[crossnode.Seen]
    wall_ns: int
    addresses: set[str]
    summary: dict
    span: tuple[int, int]   # when this node recorded, on its kernel clock
    loss_marks: list[int]   # when its recorder noted lost evidence (kernel clock)


def node_rows(index: int, name: str, rec: recording.Recording, label: str,
              on_warning: Callable[[str], None] | None = None) -> NodeRows:
    """Replay one node's recording; keep its rows and what the join needs."""
    no_mac = current().flags["no_mac"]
    rows: list[Row] = []
    seen: list[crossnode.Seen] = []

    def keep(row: Row, pkt) -> None:
        e = pkt.entry
        ident = identity.of_frame(e.hdr, not (e.flags & no_mac)) if e is not None and e.hdr else None
        seen.append(crossnode.Seen(
            node=index, index=len(rows), ts=row["ts"] or 0, ident=ident,
            leaves=crossnode.leaves(row), arrives=crossnode.arrives(row),
            dst=row.get("dst")))
        rows.append(row)

    summary = replay_recording(rec, label, None, packet_sink=keep, on_warning=on_warning)
    h = rec.header
    wall = int(float(h.get("start_wall", 0)) * 1e9) - int(h.get("start_ktime", 0))
    snaps, last = [h.get("snapshot", {})], int(h.get("start_ktime", 0))
    marks: list[int] = []
    for ftype, payload in rec.frames():
        if ftype == recording.F_SNAPSHOT:
            snaps.append(payload)
        elif ftype == recording.F_TICK:
            last = max(last, recording.TICK.unpack(payload)[0])
        elif ftype == recording.F_LOST:
            ktime, count = recording.LOST.unpack(payload)
            if count:
                marks.append(ktime)
    last = max([last] + [s.ts for s in seen])
    return NodeRows(name, rows, seen, wall, crossnode.node_addresses(snaps), summary,
                    (int(h.get("start_ktime", 0)), last), marks)


def default_names(paths: list[Path], recs: list[recording.Recording]) -> list[str]:
    """A recording's host name when each is a usable, distinct name; else
    the file names' stems."""
    hosts = [r.header.get("host") for r in recs]
    for cands in (hosts, [p.stem for p in paths], [f"node{i + 1}" for i in range(len(paths))]):
        try:
            names = [merged.check_name(c) for c in cands]
        except ValueError:
            continue
        if len(set(names)) == len(names):
            return names
    raise AssertionError("unreachable: node1.. are valid, distinct names")


def join_nodes(nodes: list[NodeRows]) -> crossnode.Join:
    return crossnode.join([n.seen for n in nodes], [n.wall_ns for n in nodes],
                          [n.addresses for n in nodes], [n.span for n in nodes],
                          [n.loss_marks for n in nodes])


def clock_json(nodes: list[NodeRows], j: crossnode.Join) -> dict:
    ref = j.offsets_ns[0]
    return {n.name: {"offset_ns": j.offsets_ns[i] - ref, "from": j.method[i]}
            for i, n in enumerate(nodes)}


def merged_rows(nodes: list[NodeRows], j: crossnode.Join) -> list[Row]:
    """Every node's rows on the merged clock, in time order; a packet that
    crossed is followed at once by its arrival (hop by hop)."""
    t0 = min((s.ts + j.offsets_ns[s.node] for n in nodes for s in n.seen), default=0)
    order: list[tuple[int, int, int]] = []   # (time, node, index)
    for n_i, n in enumerate(nodes):
        for s in n.seen:
            cx = j.by_row.get((n_i, s.index))
            if cx is not None and cx[1] == "arrived":
                continue   # printed after the row that left
            order.append((s.ts + j.offsets_ns[n_i], n_i, s.index))
    order.sort()
    out: list[Row] = []
    for _, n_i, idx in order:
        out.append(_annotate(nodes, j, n_i, idx, t0))
        cx = j.by_row.get((n_i, idx))
        if cx is not None and cx[0].arrived is not None:
            a = cx[0].arrived
            out.append(_annotate(nodes, j, a.node, a.index, t0))
    return out


def _annotate(nodes: list[NodeRows], j: crossnode.Join, n_i: int, idx: int, t0: int) -> Row:
    row = dict(nodes[n_i].rows[idx])
    s = nodes[n_i].seen[idx]
    row["node"] = nodes[n_i].name
    row["time"] = round((s.ts + j.offsets_ns[n_i] - t0) / 1e9, 6)
    cx = j.by_row.get((n_i, idx))
    if cx is not None:
        c, at = cx
        # arrived: true, false (lost between the nodes) or null (not seen,
        # but the destination's recording lost evidence then: not known)
        info = {"id": c.id, "at": at, "from": nodes[c.left.node].name,
                "to": nodes[c.to_node].name,
                "arrived": None if c.unseen else c.arrived is not None}
        if c.arrived is not None:
            info["wire_s"] = round((c.arrived.ts + j.offsets_ns[c.arrived.node]
                                    - c.left.ts - j.offsets_ns[c.left.node]) / 1e9, 6)
        row["crossing"] = info
    return row


def run_merge(paths: list[Path], out: Path, names: list[str] | None = None,
              on_warning: Callable[[str], None] | None = None) -> dict:
    """Check and join the recordings, write the merged file; a summary."""
    if len(paths) < 2 or len(paths) > merged.MAX_NODES:
        raise ValueError(f"merge takes 2 to {merged.MAX_NODES} recordings")
    recs = []
    for p in paths:
        if merged.is_merged(p):
            raise recording.RecordingError(f"{p}: already a merged file; merge the recordings it came from")
        recs.append(recording.read(p))
    if names:
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} --name for {len(paths)} recordings")
        names = [merged.check_name(n) for n in names]
        if len(set(names)) != len(names):
            raise ValueError("two nodes with one name")
    else:
        names = default_names(paths, recs)
    nodes = [node_rows(i, n, r, str(p), on_warning) for i, (n, r, p) in enumerate(zip(names, recs, paths))]
    j = join_nodes(nodes)
    clock = clock_json(nodes, j)
    merged.write(out, names, paths, clock)
    return summary(nodes, j, clock)


def summary(nodes: list[NodeRows], j: crossnode.Join, clock: dict) -> dict:
    ways: dict[str, dict] = {}
    for c in j.crossings:
        key = f"{nodes[c.left.node].name} -> {nodes[c.to_node].name}"
        w = ways.setdefault(key, {"arrived": 0, "lost": 0, "unknown": 0})
        w["arrived" if c.arrived is not None else "unknown" if c.unseen else "lost"] += 1
    return {"nodes": {n.name: n.summary["packets"] for n in nodes}, "crossings": ways,
            "lost_events": {n.name: n.summary["lost_events"] for n in nodes}, "clock": clock}


def replay_merged(path: Path, sink: Callable[[Row], None] | None,
                  row_filter: Callable[[Row], bool] | None = None,
                  on_warning: Callable[[str], None] | None = None) -> dict:
    """Replay a merged file: each node's rows through the one pipeline, then
    joined; *sink* gets them on the merged clock, hop by hop."""
    m = merged.read(path)
    nodes = [node_rows(i, p.name, p.recording, f"{path} [{p.name}]", on_warning)
             for i, p in enumerate(m.parts)]
    j = join_nodes(nodes)
    shown = 0
    for row in merged_rows(nodes, j):
        if row_filter is not None and not row_filter(row):
            continue
        shown += 1
        if sink is not None:
            sink(row)
    out = summary(nodes, j, clock_json(nodes, j))
    out["shown"] = shown
    out["trailer"] = {"lost_events": sum(int(n.summary["trailer"].get("lost_events", 0) or 0)
                                         for n in nodes)}
    return out
