"""Rows -> terminal lines (rich); JSON lines are output/jsonlines.py. Never
touches the kernel.

Live and replay print rows one by one with fixed column widths, so the two
outputs are the same text.
"""
from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ipvtrace.output.jsonlines import stats_line

COLUMNS = (("TIME", 10), ("FROM", 20), ("TO", 20), ("PACKET", 58), ("BRANCH", 20), ("DELIVERY", 10))

BRANCH_STYLE = {
    "tx": "cyan", "rx": "green", "mcast": "magenta", "unknown": "bold red",
}


def printable(s: str) -> str:
    """*s* with each character that does not print as U+FFFD, one for one.
    A row's names come from the kernel (an interface name may hold an ESC)
    or from a recording made elsewhere: on a terminal they must not move the
    cursor, clear the screen or break a line. One for one, so the column
    widths and rich's style spans stay where they were."""
    return s if s.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in s)


def printable_row(v):
    """A row (or a part of it) with every string printable(); other values
    as they are."""
    if isinstance(v, str):
        return printable(v)
    if isinstance(v, dict):
        return {printable(k): printable_row(x) for k, x in v.items()}
    if isinstance(v, list):
        return [printable_row(x) for x in v]
    return v


def _dev(ref: dict | None) -> str:
    return f"{ref['dev']}@{ref['netns']}" if ref else "-"


def _cell(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


NODE_WIDTH = 12


def _crossing(cx: dict) -> str:
    """A packet between two nodes, as its row on either side says it."""
    if cx["at"] == "arrived":
        return f"  <- hop from {cx['from']} ({cx['wire_s'] * 1e3:.3f} ms later)"
    if cx["arrived"]:
        return f"  -> {cx['to']}"
    if cx["arrived"] is None:
        return f"  -> {cx['to']}? (not seen there; its recording lost evidence then)"
    return f"  -> never reached {cx['to']}"


class LineSink:
    """One line per packet (plus one per multicast delivery), header first."""

    def __init__(self, console: Console | None = None, *, why: bool = False) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.why = why
        self._header = False

    def header(self, node: bool = False) -> None:
        t = Text()
        if node:
            t.append(f"{'NODE':<{NODE_WIDTH}} ", style="bold")
        for name, width in COLUMNS:
            t.append(f"{name:<{width}} ", style="bold")
        self.console.print(t)
        self._header = True

    def __call__(self, row: dict) -> None:
        # what the line shows made printable before rich sees it (rich drops
        # some control characters, which would shift the columns); the
        # events, which it does not show, are not copied
        row = printable_row({k: v for k, v in row.items() if k != "events"})
        node = row.get("node")
        if not self._header:
            self.header(node is not None)
        branch = row["branch"]
        t = Text()
        if node is not None:   # a merged file (ipvtrace merge): which node saw it
            t.append(f"{_cell(node, NODE_WIDTH):<{NODE_WIDTH}} ", style="bold")
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
        cx = row.get("crossing")
        if cx:
            t.append(_crossing(cx), style="bold" if cx["arrived"] else
                     "yellow" if cx["arrived"] is None else "bold red")
        self.console.print(t)
        for m in row.get("mcast", []):
            sub = Text(" " * (COLUMNS[0][1] + 1 + (NODE_WIDTH + 1 if node is not None else 0)))
            sub.append(f"{'':<{COLUMNS[1][1]}} {_cell(_dev(m.get('to')), COLUMNS[2][1]):<{COLUMNS[2][1]}} ")
            sub.append(f"{'  └ by ' + m.get('by', ''):<{COLUMNS[3][1]}} ")
            sub.append(f"{m['branch']:<20} ", style=BRANCH_STYLE["mcast"])
            sub.append(m.get("delivery") or "-")
            self.console.print(sub)
        if self.why and row.get("why"):
            pad = COLUMNS[0][1] + (NODE_WIDTH + 1 if node is not None else 0)
            self.console.print(Text(f"{'':<{pad}} why: {row['why']}", style="dim"))


def print_stats(summary: dict, console: Console, as_json: bool = False) -> None:
    """Packets per branch, drops by reason, lost events: live's Ctrl-C
    summary and `replay --stats`."""
    if as_json:
        console.file.write(stats_line(summary) + "\n")
        return
    from rich.table import Table

    summary = printable_row(summary)   # (drop reasons and stat names come from the file)

    t = Table(title=f"{summary.get('packets', 0)} packets", title_justify="left")
    t.add_column("branch")
    t.add_column("packets", justify="right")
    for branch, n in summary.get("branches", {}).items():
        style = "bold red" if "drop" in branch or branch == "unknown" else ""
        t.add_row(Text(branch, style=style), str(n))
    console.print(t)
    drops = summary.get("drops", {})
    if drops:
        d = Table(title="drops (branch: reason)", title_justify="left")
        d.add_column("where and why")
        d.add_column("packets", justify="right")
        for k, n in drops.items():
            d.add_row(Text(k, style="red"), str(n))
        console.print(d)
    lost = summary.get("lost_events", 0)
    console.print(Text(f"lost events: {lost}", style="bold red" if lost else ""))
    kstats = summary.get("kernel_stats") or summary.get("trailer", {}).get("kernel_stats") or {}
    missed = {k.split(".", 1)[1]: v for k, v in kstats.items() if k.startswith("kprobe_missed.")}
    if missed:
        console.print(Text("kprobe misses (counted as lost): "
                           + ", ".join(f"{k} {v}" for k, v in sorted(missed.items())), style="red"))
    skipped = {k.split(".", 1)[1]: v for k, v in kstats.items() if k.startswith("skipped.")}
    if skipped:
        console.print(Text("probe hits the kernel skipped, a BPF program or map syscall holding "
                           "the CPU, or on PREEMPT_RT another task's preempted run of the same "
                           "program (counted as lost): "
                           + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())), style="red"))
    if summary.get("evicted"):
        console.print(f"evicted unfinished (a return probe missed or lost): {summary['evicted']}")
    if summary.get("unattributed_events"):
        console.print(f"events outside any packet: {summary['unattributed_events']}")
    if summary.get("filtered_out"):
        console.print(f"packets hidden by the filters: {summary['filtered_out']}")


class Dashboard:
    """`ipvtrace live` on a terminal: a header, counters per branch (drops
    highlighted) and the most recent packets. Redraws follow the clock
    (rich Live, in its own thread), not the packet rate, so it stays readable
    under load. Rows arrive on the consumer's thread and are drawn on rich's:
    the state is handed over under a lock, and drawn from a copy."""

    def __init__(self, *, recent: int = 15, console: Console | None = None) -> None:
        import threading
        from collections import Counter, deque

        self.console = console or Console(highlight=False)
        self.rows: deque = deque(maxlen=recent)
        self.branches: Counter = Counter()
        self.packets = 0
        self.header = "ipvtrace: compiling and attaching probes..."
        self.lost = 0
        self._lost = None
        self._lock = threading.Lock()
        self._live = None

    def attached(self, header: str, lost) -> None:
        with self._lock:
            self.header = header
            self._lost = lost

    def __call__(self, row: dict) -> None:
        with self._lock:
            self.packets += 1
            self.branches[row["branch"]] += 1
            for m in row.get("mcast", []):
                self.branches[m["branch"]] += 1
            self.rows.append(row)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        with self._lock:   # a consistent copy; drawing happens outside the lock
            header, packets, lost_fn = self.header, self.packets, self._lost
            items = sorted(self.branches.items())
            rows = list(self.rows)
        rows = [printable_row(r) for r in rows]   # (their names may not print; branch ids do)
        if lost_fn is not None:
            self.lost = lost_fn()
        head = Text(f"{header}   packets {packets}   ")
        head.append(f"lost events {self.lost}", style="bold red" if self.lost else "green")
        counts = Table(box=None, show_header=False, padding=(0, 2))
        for i in range(0, len(items), 4):
            cells = []
            for b, n in items[i:i + 4]:
                bad = "drop" in b or b == "unknown"
                cells.append(Text(f"{b} {n}", style="bold red" if bad else ""))
            counts.add_row(*cells)
        recent = dashboard_table()
        for row in rows:
            bad = row.get("delivery") in ("dropped", "slave_down", "forward_failed")
            recent.add_row(f"{row['time']:.6f}" if row.get("time") is not None else "?",
                           _dev(row.get("from")), _dev(row.get("to")), row.get("summary") or "?",
                           Text(row["branch"], style="bold red" if bad else ""),
                           row.get("delivery") or "-")
        return Group(head, counts, recent)

    def __enter__(self) -> "Dashboard":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)


# the dashboard's recent packets: TIME, BRANCH and DELIVERY are never cut
# (the longest branch id and delivery fit); FROM, TO and PACKET share what
# the terminal has left, PACKET the most
FIXED = {"TIME": 13, "BRANCH": 19, "DELIVERY": 14}
FLEX = {"FROM": 2, "TO": 2, "PACKET": 5}


def dashboard_table():
    from rich.table import Table

    t = Table(box=None, padding=(0, 1), pad_edge=False, expand=True)
    for name, _ in COLUMNS:
        if name in FIXED:
            t.add_column(name, min_width=FIXED[name], no_wrap=True)
        else:
            t.add_column(name, ratio=FLEX[name], min_width=4, no_wrap=True, overflow="ellipsis")
    return t


def stats_table(report: dict | None):
    """`ipvtrace stats`: one reading of the in-kernel counters."""
    from rich.console import Group
    from rich.table import Table

    if report is None:
        return Text("ipvtrace: compiling and attaching probes (counting mode)...")
    misses = report.get("kprobe_misses_total", 0)
    repairs = {k: v for k, v in report.get("kernel_stats", {}).items()
               if not k.startswith(("lost.", "kprobe_missed.", "skipped."))}
    skipped = sum(v for k, v in report.get("kernel_stats", {}).items() if k.startswith("skipped."))
    head = Text(f"ipvtrace stats on {report['kernel']}: {report['probes']} probes, counting in "
                f"the kernel   {report['elapsed_s']:.0f} s   packets {report['packets']}   ")
    head.append(f"kprobe misses {misses}", style="bold red" if misses else "green")
    if skipped:
        head.append(f"   skipped by the kernel {skipped}", style="bold red")
    if repairs:
        head.append("   " + " ".join(f"{k} {v}" for k, v in sorted(repairs.items())),
                    style="yellow")
    t = Table(box=None, padding=(0, 1))
    for name, justify in (("branch", "left"), ("delivery", "left"), ("from", "left"),
                          ("to", "left"), ("packets", "right"), ("per s", "right"),
                          ("reason", "left")):
        t.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    for r in report["rows"]:
        bad = r["delivery"] in ("dropped", "slave_down", "forward_failed") or r["branch"] == "unknown"
        t.add_row(Text(r["branch"], style="bold red" if bad else ""), r["delivery"] or "-",
                  r["from"], r["to"], str(r["packets"]),
                  f"{r['per_s']:.0f}" if r.get("per_s") is not None else "-", r["reason"] or "")
    return Group(head, t)


class StatsView:
    """`ipvtrace stats` on a terminal: the counter table, redrawn each reading."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.report: dict | None = None
        self._live = None

    def __call__(self, report: dict) -> None:
        self.report = report
        if self._live is not None:
            self._live.refresh()

    def __rich__(self):
        return stats_table(self.report)

    def __enter__(self) -> "StatsView":
        from rich.live import Live

        self._live = Live(self, console=self.console, auto_refresh=False, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
