"""Netlink reads of devices that appeared while tracing, off the consumer's
thread.

A pod's first frames name a device the start-up snapshot has not seen; its
namespace must be read (snapshot.take_netns, tens of ms in an emulated
guest; the whole node for a parent with no known port) before those frames
are written or classified. Done inline in the ring-buffer callback, a burst
of new pods stalled the consumer for seconds and the ring overflowed (6.12,
pod churn under multicast). Here one thread reads, in the order asked, and
hands each snapshot back; the caller holds the frames that wait for it.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from ipvtrace.capture import snapshot

# (whole node?, (netns inode, ifindex) of the device that asked)
Tag = tuple[bool, tuple[int, int]]


@dataclass
class Done:
    tag: Tag
    snap: dict | None
    error: BaseException | None
    seconds: float


class Refresher:
    """One reader thread, started at the first request, fed in order."""

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.pending = 0

    def request(self, tag: Tag, known: list[dict]) -> None:
        """Read what *tag* names; *known* (a copy: the caller's topology
        changes while this runs) resolves the new devices' links."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ipvtrace-refresh", daemon=True)
            self._thread.start()
        self.pending += 1
        self._todo.put((tag, known))

    def done(self, block: bool = False) -> list[Done]:
        """The reads finished since the last call (at least one if *block*
        and any is pending), in the order they were asked."""
        out: list[Done] = []
        if block and self.pending:
            out.append(self._done.get())
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.pending -= len(out)
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            tag, known = item
            t = time.monotonic()
            try:
                whole_node, (netns, _) = tag
                snap = snapshot.take() if whole_node else snapshot.take_netns(netns, known)
                self._done.put(Done(tag, snap, None, time.monotonic() - t))
            except BaseException as exc:  # handed to the consumer, which raises it
                self._done.put(Done(tag, None, exc, time.monotonic() - t))
