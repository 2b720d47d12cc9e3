"""What every attached command shares: the clock the BPF program reads, the
stop signals, and the announcement scripts and people wait for."""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable, Generic, TypeVar

from ipvtrace.capture import probes

T = TypeVar("T")


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


class Beside(Generic[T]):
    """*fn* run in a thread while the main thread compiles the BPF program.

    bcc's compile is a ctypes call, which releases the GIL, so Python work
    that does not need the compiled program (pyroute2's import and the
    netlink snapshot: 3-7 s of a guest's start-up) costs no wall time beside
    it. The thread only reads; it attaches nothing, so a Ctrl-C or a failed
    compile need not wait for it (daemon). Its exception, if any, is raised
    by result() in the caller's thread."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._out: dict = {}

        def run() -> None:
            try:
                self._out["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                self._out["error"] = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def result(self) -> T:
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]
