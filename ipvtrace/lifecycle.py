"""What every attached command shares: the clock the BPF program reads, the
stop signals, and the announcement scripts and people wait for."""
from __future__ import annotations

import signal
import sys
import time

from ipvtrace.capture import probes


def ktime_ns() -> int:
    """The clock bpf_ktime_get_ns() reads."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class StopFlag:
    """SIGINT/SIGTERM, once `install()`ed (after the probes are attached, so a
    Ctrl-C during the compile still interrupts), only note why to stop:
    raising could land inside the ring buffer callback or half-way through
    writing a frame. The previous handlers come back on exit, after the
    probes are gone and the file is closed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.why: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopFlag":
        self._old = {s: signal.getsignal(s) for s in self.SIGNALS}
        return self

    def install(self) -> None:
        for s in self.SIGNALS:
            signal.signal(s, self._note)

    def _note(self, signum, _frame) -> None:
        self.why = self.why or signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def announce(plan: probes.ProbePlan, headline: str) -> None:
    """The line scripts and people wait for, then what this kernel cannot show."""
    print(f"ipvtrace: {headline}; Ctrl-C to end", file=sys.stderr, flush=True)
    for line in probes.what_this_kernel_shows(plan):
        print(f"ipvtrace: note: {line}", file=sys.stderr)
