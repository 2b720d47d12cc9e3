"""Rows -> terminal lines (rich) or JSON lines. Never touches the kernel.

Live and replay print rows one by one with fixed column widths, so the two
outputs are the same text.
"""
from __future__ import annotations

import json
import sys
from typing import TextIO

from rich.console import Console
from rich.text import Text

COLUMNS = (("TIME", 10), ("FROM", 20), ("TO", 20), ("PACKET", 58), ("BRANCH", 20), ("DELIVERY", 10))

BRANCH_STYLE = {
    "tx": "cyan", "rx": "green", "mcast": "magenta", "unknown": "bold red",
}


def _dev(ref: dict | None) -> str:
    return f"{ref['dev']}@{ref['netns']}" if ref else "-"


def _cell(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


class LineSink:
    """One line per packet (plus one per multicast delivery), header first."""

    def __init__(self, console: Console | None = None, *, why: bool = False) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.why = why
        self._header = False

    def header(self) -> None:
        t = Text()
        for name, width in COLUMNS:
            t.append(f"{name:<{width}} ", style="bold")
        self.console.print(t)
        self._header = True

    def __call__(self, row: dict) -> None:
        if not self._header:
            self.header()
        branch = row["branch"]
        t = Text()
        time_s = f"{row['time']:.6f}" if row.get("time") is not None else "?"
        cells = (time_s, _dev(row.get("from")), _dev(row.get("to")), row.get("summary") or "?")
        for (name, width), val in zip(COLUMNS, cells):
            t.append(f"{_cell(val, width):<{width}} ")
        style = BRANCH_STYLE.get(branch.split(".")[0], "")
        if row.get("delivery") in ("dropped", "slave_down", "forward_failed") or branch == "unknown":
            style = "bold red"
        t.append(f"{_cell(branch, 20):<20} ", style=style)
        t.append(row.get("delivery") or "-")
        if not row.get("complete"):
            t.append(" (incomplete)", style="yellow")
        if row.get("reason"):
            t.append(f" reason={row['reason']}", style="red")
        self.console.print(t)
        for m in row.get("mcast", []):
            sub = Text(" " * (COLUMNS[0][1] + 1))
            sub.append(f"{'':<{COLUMNS[1][1]}} {_cell(_dev(m.get('to')), COLUMNS[2][1]):<{COLUMNS[2][1]}} ")
            sub.append(f"{'  └ by ' + m.get('by', ''):<{COLUMNS[3][1]}} ")
            sub.append(f"{m['branch']:<20} ", style=BRANCH_STYLE["mcast"])
            sub.append(m.get("delivery") or "-")
            self.console.print(sub)
        if self.why and row.get("why"):
            self.console.print(Text(f"{'':<{COLUMNS[0][1]}} why: {row['why']}", style="dim"))


class JsonSink:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def __call__(self, row: dict) -> None:
        self.out.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.out.flush()
