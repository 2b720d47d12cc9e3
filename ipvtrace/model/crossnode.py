"""One packet across nodes: join a frame that left one node's ipvlan port
with its arrival at another node's, and put the nodes on one clock.

Pure data, no files: `ipvtrace merge` and the replay of a merged file give
it each node's rows (already classified by the one pipeline) and show what
it returns.

Packets are matched by identity (model/identity.py), never by time alone.
Clocks differ per node (each recording's times are that kernel's monotonic
clock; its header ties them to a wall clock that may be off by seconds), so:
1. a first guess puts every node on its wall clock;
2. packets whose identity occurs once leaving one node and once arriving at
   another give the offset between the two clocks: with packets both ways,
   half the difference of the two directions' smallest apparent delays (as
   NTP does it: the wire's delay cancels out, and the fastest packets are
   the ones least delayed by queues). That offset is the middle of the range
   in which no paired packet arrives before it left, so none does; one way
   only, the smallest delay (the wire counted as zero: stated in the
   result);
3. then every leaving row is paired with the nearest arrival of the same
   identity at another node within a window on the aligned clock.
A leaving row left unpaired whose destination is an address of another
recorded node, sent while that node was recording (and at least a window
before it stopped), is a packet lost between the nodes, unless that node's
recording says it lost evidence while the packet could have been arriving
(a loss mark: its ring buffer was full, or its kernel skipped probe hits,
which happens when a softirq runs inside another probe's program): then
whether it arrived is not known, and the join says so instead of blaming
the wire.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ipvtrace.model.catalogue import load as catalogue

WINDOW_NS = 1_000_000_000   # after alignment, a hop takes less than this
# a recorder writes its loss mark at its next clock tick (every 200 ms, a
# little later when its consumer is busy): a mark this long after a packet
# could have arrived may be for that packet
MARK_LAG_NS = 2_000_000_000
# ... and before 2026-12-03 it stamped the mark with the clock read *before*
# the tick's poll, whose counters, read after the poll (up to 200 ms) and the
# batch it brought, showed the loss: such a mark may precede its loss. One
# from node-b on 6.12 came 191 ms before the echo request whose arrival it
# lost (CI, two-node test). Marks this long before a departure count too.
MARK_EARLY_NS = 1_000_000_000


@dataclass
class Seen:
    """One row of one node, as the join needs it."""
    node: int
    index: int           # the row's place in its node's list
    ts: int              # that node's kernel clock
    ident: bytes | None
    leaves: bool         # left the node by its ipvlan port's parent
    arrives: bool        # came in on a parent's ipvlan rx_handler
    dst: str | None      # where it was sent: a lost packet is one for a recorded node


@dataclass
class Crossing:
    id: int
    left: Seen
    arrived: Seen | None
    to_node: int
    unseen: bool = False   # not arrived, but the destination lost evidence then


@dataclass
class Join:
    offsets_ns: list[int]          # node clock -> the merged clock: add this
    method: list[str]              # per node, how its offset was found
    crossings: list[Crossing] = field(default_factory=list)
    by_row: dict[tuple[int, int], tuple[Crossing, str]] = field(default_factory=dict)


def leaves(row: dict) -> bool:
    """Did this row's frame leave the node (the catalogue's `leaves_node`)?"""
    cat = catalogue().branches
    b = cat.get(row.get("branch"))
    if b is not None and b.leaves_node:
        return True
    return any(cat[m["branch"]].leaves_node for m in row.get("mcast", ()) if m.get("branch") in cat)


def arrives(row: dict) -> bool:
    return row.get("direction") == "rx"


def node_addresses(snapshots: list[dict]) -> set[str]:
    """Every address (without prefix length) a node's snapshots show."""
    out: set[str] = set()
    for snap in snapshots:
        for dev in snap.get("devices", ()):
            for a in dev.get("addrs", ()) or ():
                if isinstance(a, str):
                    out.add(a.split("/", 1)[0])
    return out


def join(nodes: list[list[Seen]], wall_ns: list[int], addresses: list[set[str]],
         spans: list[tuple[int, int]] | None = None,
         loss_marks: list[list[int]] | None = None) -> Join:
    """Pair leaving rows with arrivals; *wall_ns[i]* turns node i's kernel
    clock into its wall clock (the recording header's start times);
    *spans[i]*: when node i recorded, on its kernel clock (None: always);
    *loss_marks[i]*: when node i's recorder noted lost evidence (its clock)."""
    n = len(nodes)
    offsets = list(wall_ns)
    method = ["reference"] + ["wall clock (no packet seen on both)"] * (n - 1)
    # 2. offsets from identities seen exactly once leaving and once arriving
    leaving: dict[bytes, list[Seen]] = {}
    arriving: dict[bytes, list[Seen]] = {}
    for rows in nodes:
        for s in rows:
            if s.ident is None:
                continue
            if s.leaves:
                leaving.setdefault(s.ident, []).append(s)
            if s.arrives:
                arriving.setdefault(s.ident, []).append(s)
    delays: dict[tuple[int, int], list[int]] = {}
    for ident, out in leaving.items():
        into = arriving.get(ident, ())
        if len(out) == 1 and len(into) == 1 and out[0].node != into[0].node:
            a, b = out[0], into[0]
            delays.setdefault((a.node, b.node), []).append(
                (b.ts + wall_ns[b.node]) - (a.ts + wall_ns[a.node]))
    for other in range(1, n):
        there = delays.get((0, other))
        back = delays.get((other, 0))
        if there and back:
            # medians looked right but are not: under jitter (29 ms against
            # 0.4 ms under emulation) they put a packet's arrival before it left
            skew = (min(there) - min(back)) / 2
            method[other] = (f"{len(there)}+{len(back)} packets both ways "
                             "(wire delay cancelled)")
        elif there or back:
            # one way only: the fastest packet's delay taken as the skew
            skew = min(there) if there else -min(back)
            method[other] = f"{len(there or back)} packets one way (wire delay counted as 0)"
        else:
            continue
        offsets[other] = wall_ns[other] - int(skew)
    # 3. pair every leaving row with the nearest arrival elsewhere
    result = Join(offsets_ns=offsets, method=method)
    taken: set[tuple[int, int]] = set()
    owner = [_owners(addrs) for addrs in addresses]
    for rows in nodes:
        for s in rows:
            if not s.leaves:
                continue
            t = s.ts + offsets[s.node]
            best = None
            for c in arriving.get(s.ident, ()) if s.ident is not None else ():
                if c.node == s.node or (c.node, c.index) in taken:
                    continue
                d = abs(c.ts + offsets[c.node] - t)
                if d <= WINDOW_NS and (best is None or d < best[0]):
                    best = (d, c)
            if best is not None:
                c = best[1]
                taken.add((c.node, c.index))
                cx = Crossing(id=len(result.crossings) + 1, left=s, arrived=c, to_node=c.node)
            else:
                to = next((i for i in range(n) if i != s.node and s.dst in owner[i]), None)
                if to is None or s.dst in owner[s.node]:
                    continue   # for somewhere no recording covers, or this node itself
                there = t - offsets[to]   # the moment it left, on that node's clock
                if spans is not None:
                    lo, hi = spans[to]
                    if there < lo or there > hi - WINDOW_NS:
                        continue   # that node was not recording (or stopped before it could arrive)
                unseen = loss_marks is not None and any(
                    there - MARK_EARLY_NS <= m <= there + WINDOW_NS + MARK_LAG_NS
                    for m in loss_marks[to])
                cx = Crossing(id=len(result.crossings) + 1, left=s, arrived=None, to_node=to,
                              unseen=unseen)
            result.crossings.append(cx)
            result.by_row[(s.node, s.index)] = (cx, "left")
            if cx.arrived is not None:
                result.by_row[(c.node, c.index)] = (cx, "arrived")
    return result


def _owners(addrs: set[str]) -> set[str]:
    """Addresses in their canonical text form (rows print them that way)."""
    out = set()
    for a in addrs:
        try:
            out.add(str(ipaddress.ip_address(a)))
        except ValueError:
            continue
    return out
