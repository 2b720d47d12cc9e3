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

import itertools
import operator
from typing import Iterable, Protocol, Sequence

from ipvtrace.model import alike
from ipvtrace.model.decode import Event, Shape

Path = tuple   # a value's place in a row: ("ts",), ("events", 2, "skb"), ...


class Template(Protocol):
    """A row's line with holes (jsonlines.LineTemplate)."""

    def __call__(self, values: Sequence) -> str: ...

    def text(self, rows: int, columns: Sequence[Iterable], as_hex: frozenset[int],
             same: dict[int, object]) -> str: ...


class LineSink(Protocol):
    """A sink that writes each row as one line (jsonlines.JsonSink) and can
    keep a row's constant parts, filling in only what differs."""

    def __call__(self, row: dict) -> None: ...

    def encode(self, row: dict) -> str: ...

    def template(self, row: dict, holes: Sequence[Path]) -> Template | None: ...

    def write(self, line: str) -> None: ...

    def write_text(self, text: str) -> None: ...


class Holes:
    """Where a context record's row differs from its like's, and how each
    value comes from the record (`Shape.vol`): the time, the summary, and
    each event's CPU, timestamp and skb."""

    def __init__(self, paths: list[Path], steps: list[tuple[str | None, str | None]],
                 at: dict, t0: int) -> None:
        self.paths = paths
        self._names = steps                # per event: (its time offset's name in Shape.at, its skb's)
        self._steps = [(None if dt is None else at[dt], None if skb is None else at[skb])
                       for dt, skb in steps]   # ... and their indexes in Shape.vol
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
        steps: list[tuple[str | None, str | None]] = []
        for i, d in enumerate(shown):
            if "cpu" not in d or "ts" not in d:
                return None
            dt, skb = ((None, "skb") if i == 0 else ("ret_dt", None) if i == last
                       else (f"dt.{i - 1}", f"skb.{i - 1}"))
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

    def text(self, fill: Template, plan: alike.Plan, pattern: tuple[int, ...], blob: bytes,
             at: int, step: int, count: int, summary: str | list[str]) -> str | None:
        """The lines of the records at blob[at + i*step], i < count, all
        like the one *fill* was made for (alike.check said so, with their
        pointer *pattern* and no time of 0), each with the values values()
        gives it; *summary* is theirs, one or one each. Read a field at a
        time across the records (alike.column), converted and joined a
        column at a time. None when the plan does not say where a value is."""
        try:
            where = {name: plan.vol(name, pattern)
                     for name in {"ts", "cpu", *(n for pair in self._names for n in pair if n)}}
        except KeyError:
            return None
        cols = {w: alike.column(blob, at, step, count, w) for w in set(where.values())}
        col = {name: cols[w] for name, w in where.items()}   # (equal pointers: one column)
        ts, cpu = col["ts"], col["cpu"]
        columns: list[Iterable] = [times(ts, self._t0), ts, summary]
        as_hex, same = [], {}
        if isinstance(summary, str):
            same[2] = summary
        # one CPU for the whole run (a flood's sender stays on one): written
        # into the constant text, a third fewer pieces a row to join
        one_cpu = cpu[0] if min(cpu) == max(cpu) else None
        for dt, skb in self._names:
            if one_cpu is not None:
                same[len(columns)] = one_cpu
            columns.append(cpu)
            columns.append(ts if dt is None else map(operator.add, ts, col[dt]))
            if skb is not None:
                as_hex.append(len(columns))
                columns.append(col[skb])
        return fill.text(count, columns, frozenset(as_hex), same)


_EXACT_NS = 10**14   # below this many ns (27 hours), d / 1e9 is within 0.02 ns of d ns


def times(ts: Sequence[int], t0: int) -> list[float]:
    """round((t - t0) / 1e9, 6) for each t of *ts*, as to_row writes a row's
    time, with a few C-level maps for the lot. The double round() gives is
    the one nearest to k/10**6, k the microseconds it rounded to, which is
    what k / 1e6 gives; k is (d + 500) // 1000 for d = t - t0 ns, except on
    a tie (d % 1000 == 500), where round() follows the binary value of d /
    1e9: those times (one in a thousand) are computed as to_row does. So
    are all of a run where d is so large that this value can stray by a
    nanosecond, or below zero (round() may give -0.0)."""
    rep = itertools.repeat
    d = list(map(operator.sub, ts, rep(t0)))
    if max(d) >= _EXACT_NS or min(d) < 0:
        return [round(x / 1e9, 6) for x in d]
    out = list(map(operator.truediv, map(operator.floordiv, map(operator.add, d, rep(500)),
                                         rep(1000)), rep(1e6)))
    sub_us = list(map(operator.mod, d, rep(1000)))
    i = -1
    try:
        while True:
            i = sub_us.index(500, i + 1)
            out[i] = round(d[i] / 1e9, 6)
    except ValueError:
        return out


class Like:
    """A packet whose row later records like it reuse."""

    __slots__ = ("counted", "holes", "fill")

    def __init__(self, counted: tuple, holes: Holes, fill: Template) -> None:
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
