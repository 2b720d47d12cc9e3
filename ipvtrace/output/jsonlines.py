"""Rows as JSON lines (--json): one object per line, and a row's line with
holes that the rows of records alike fill (model/rowreuse.py). Apart from
render.py so that --json needs no rich."""
from __future__ import annotations

import copy
import itertools
import json
import sys
from typing import Callable, Iterable, Sequence, TextIO


class JsonSink:
    """One JSON object per line. Live flushes each line (a reader may be
    waiting on it); replay lets the stream buffer (one write call per row
    was a third of `replay --json`'s time)."""

    def __init__(self, out: TextIO | None = None, flush: bool = True) -> None:
        self.out = out or sys.stdout
        self.flush = flush
        self._dumps = json.JSONEncoder(separators=(",", ":")).encode

    def __call__(self, row: dict) -> None:
        self.write(self._dumps(row))

    def encode(self, row: dict) -> str:
        return self._dumps(row)

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        if self.flush:
            self.out.flush()

    def write_text(self, text: str) -> None:
        """Many lines, each ended by a newline, with one write (and one
        flush): a run of rows."""
        self.out.write(text)
        if self.flush:
            self.out.flush()

    def template(self, row: dict, holes: Sequence[tuple]) -> "LineTemplate | None":
        """For rows that differ from *row* only at *holes* (paths into it):
        a LineTemplate whose fill(values) gives the line encode() gives for
        *row* with those values there, encoding only them
        (model/rowreuse.py). Each hole's value keeps the type it has in
        *row*: int, float or str. None when *row* cannot be cut so."""
        marked = copy.deepcopy(row)
        kinds = []
        for i, path in enumerate(holes):
            at = marked
            for step in path[:-1]:
                at = at[step]
            value = at[path[-1]]
            kinds.append(type(value))
            at[path[-1]] = f"\0{i}\0"
        text = self._dumps(marked)
        pieces, rest = [], text
        for i, kind in enumerate(kinds):
            mark = self._dumps(f"\0{i}\0")
            if rest.count(mark) != 1 or kind not in _HOLE_FORMATS:
                return None
            before, rest = rest.split(mark)
            pieces.append(before)
        return LineTemplate(pieces, rest, kinds)


# how a hole's value is written: as the JSON encoder writes an int (int.__repr__),
# a float (float.__repr__) and a str (already quoted and escaped by fill())
_HOLE_FORMATS = {int: "%d", float: "%r", str: "%s"}
_quote = json.encoder.encode_basestring_ascii   # what the encoder writes a str with


class LineTemplate:
    """A JSON line with holes (JsonSink.template): one row's line from its
    values, or the text of many rows at once, each value converted a column
    at a time and the pieces joined in C."""

    __slots__ = ("_pieces", "_tail", "_kinds", "_fmt", "_strings")

    def __init__(self, pieces: list[str], tail: str, kinds: list[type]) -> None:
        self._pieces, self._tail, self._kinds = pieces, tail, kinds   # (the text around hole i)
        self._fmt = "".join(p.replace("%", "%%") + _HOLE_FORMATS[k]
                            for p, k in zip(pieces, kinds)) + tail.replace("%", "%%")
        self._strings = [i for i, kind in enumerate(kinds) if kind is str]

    def __call__(self, values: Sequence) -> str:
        values = list(values)
        for i in self._strings:
            values[i] = _quote(values[i])
        return self._fmt % tuple(values)

    def text(self, rows: int, columns: Sequence[Iterable], as_hex: frozenset[int],
             same: dict[int, object] | None = None) -> str:
        """The lines of *rows* rows, each ended by a newline: row j's hole i
        is columns[i]'s j-th value, as fill() takes it, or same[i] in every
        row (its column is not read); except that the str holes in *as_hex*
        take ints, written as f"{value:#x}" is (a pointer's hex, which JSON
        writes unescaped). A column given more than once (the same object)
        is converted once. ValueError unless each column read holds *rows*
        values (no row is dropped or made up)."""
        same = same or {}
        done: dict[int, list[str]] = {}
        parts: list[Iterable[str]] = []
        piece = ""
        for i, (before, kind, col) in enumerate(zip(self._pieces, self._kinds, columns,
                                                    strict=True)):
            piece += before
            if i in same:
                piece += _CONVERT[kind](same[i])
                continue
            conv: Callable = _CONVERT[kind]
            if i in as_hex:   # the quotes go with the text around it; hex() is f"{v:#x}"
                if kind is not str:
                    raise ValueError("only a str hole can be written as hex")
                piece += '"'
                conv = hex
            parts.append(itertools.repeat(piece, rows))
            piece = '"' if i in as_hex else ""
            if isinstance(col, (list, memoryview)):
                got = done.get(id(col))
                if got is None:
                    got = done[id(col)] = list(map(conv, col))
                parts.append(got)
            else:
                parts.append(map(conv, col))
        parts.append(itertools.repeat(piece + self._tail + "\n", rows))
        return "".join(itertools.chain.from_iterable(zip(*parts, strict=True)))


# a value as fill() writes it: int.__repr__, float.__repr__ (what the JSON
# encoder writes) and a str quoted and escaped as the encoder does
_CONVERT: dict[type, Callable] = {int: int.__repr__, float: float.__repr__, str: _quote}


def stats_line(summary: dict) -> str:
    """The counts of print_stats as one JSON object (--stats --json)."""
    keys = ("packets", "branches", "drops", "lost_events", "unattributed_events", "evicted",
            "filtered_out")
    return json.dumps({k: summary.get(k) for k in keys})
