"""Rows of a flood without classifying every packet again.

A flood is a few kinds of packet repeated: records of one `decode.Shape`
whose frames name the same addresses, ports and kinds get the same branch,
devices and `why`; their rows differ only in times, the CPU, the skb
pointers and the frame's sequence number (its `summary`). When a record
like that closed as a packet of its own before, and would again now
(`Correlator.closes_alone`), its row is that packet's row with those
values put in: no events, no Evidence, no classify(), and (where the sink
can take them) no encoding of the row's constant parts.

What reuse keys on is everything the rules read (see `Shape`) and every
value the row shows, except the ones `Holes` fills in; a row is reused only
when it was complete (an incomplete row's `why` may name pointers), and
only after filling its own values into the template gave back exactly the
line the sink writes for it. tests/test_row_reuse.py replays every fixture
both ways and compares the output byte for byte.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from ipvtrace.model.decode import Event, Shape

Path = tuple   # a value's place in a row: ("ts",), ("events", 2, "skb"), ...


class LineSink(Protocol):
    """A sink that writes each row as one line (render.JsonSink) and can
    keep a row's constant parts, filling in only what differs."""

    def __call__(self, row: dict) -> None: ...

    def encode(self, row: dict) -> str: ...

    def template(self, row: dict, holes: Sequence[Path]) -> Callable[[Sequence], str] | None: ...

    def write(self, line: str) -> None: ...


class Holes:
    """Where a context record's row differs from its like's, and how each
    value comes from the record (`Shape.vol`): the time, the summary, and
    each event's CPU, timestamp and skb."""

    def __init__(self, paths: list[Path], steps: list[tuple[int | None, int | None]],
                 at: dict, t0: int) -> None:
        self.paths = paths
        self._steps = steps                # per event: (its time offset's index, its skb's)
        self._ts, self._cpu = at["ts"], at["cpu"]
        self._t0 = t0

    @classmethod
    def of(cls, row: dict, evs: list[Event], shape: Shape, t0: int) -> "Holes | None":
        """For a row made from *evs*, the events of one context record (entry,
        hits, return); None when the row's events are not those, in order."""
        shown = row.get("events")
        if not isinstance(shown, list) or [d.get("probe") for d in shown] != [e.probe for e in evs]:
            return None
        at, last = shape.at, len(evs) - 1
        paths: list[Path] = [("time",), ("ts",), ("summary",)]
        steps: list[tuple[int | None, int | None]] = []
        for i, d in enumerate(shown):
            if "cpu" not in d or "ts" not in d:
                return None
            dt, skb = ((None, at["skb"]) if i == 0 else (at["ret_dt"], None) if i == last
                       else (at[f"dt.{i - 1}"], at[f"skb.{i - 1}"]))
            paths += [("events", i, "cpu"), ("events", i, "ts")]
            if "skb" in d:
                if skb is None:
                    return None
                paths.append(("events", i, "skb"))
            steps.append((dt, skb if "skb" in d else None))
        return cls(paths, steps, at, t0)

    def values(self, vol: tuple, summary: str) -> list | None:
        """The values for `paths`, as to_row and event_json write them; None
        for a record whose time is 0 (its row has no time: not reused)."""
        ts = vol[self._ts]
        if not ts:
            return None
        cpu = vol[self._cpu]
        out = [round((ts - self._t0) / 1e9, 6), ts, summary]
        for dt, skb in self._steps:
            out.append(cpu)
            out.append(ts if dt is None else ts + vol[dt])
            if skb is not None:
                out.append(f"{vol[skb]:#x}")
        return out


class Like:
    """A packet whose row later records like it reuse."""

    __slots__ = ("counted", "holes", "fill")

    def __init__(self, counted: tuple, holes: Holes, fill: Callable[[Sequence], str]) -> None:
        self.counted = counted     # what it added to the counts (Pipeline._add)
        self.holes = holes
        self.fill = fill


def like_of(row: dict, evs: list[Event], shape: Shape, summary: str, counted: tuple,
            sink: LineSink, t0: int) -> Like | None:
    """A Like from a packet that just went the whole way, or None when its
    row cannot be reused (see the module's docstring)."""
    if not row.get("complete"):
        return None
    holes = Holes.of(row, evs, shape, t0)
    if holes is None:
        return None
    fill = sink.template(row, holes.paths)
    vals = holes.values(shape.vol, summary)
    if fill is None or vals is None or fill(vals) != sink.encode(row):
        return None
    return Like(counted, holes, fill)
