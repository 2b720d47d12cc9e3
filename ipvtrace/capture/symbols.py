"""Kernel addresses -> `function+0xoff`, and drop-reason numbers -> names.

Live resolves with /proc/kallsyms; every resolution it used is written into the
recording, so replay shows the same names on a machine with another kernel.
"""
from __future__ import annotations

import bisect
import re
from pathlib import Path


class Kallsyms:
    """Lazy /proc/kallsyms index of text symbols."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        self._addrs: list[int] | None = None
        self._names: list[str] = []

    def _load(self) -> None:
        pairs = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        addr = int(parts[0], 16)
                        if addr:
                            pairs.append((addr, parts[2]))
        except OSError:
            pass
        pairs.sort()
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]

    def resolve(self, addr: int) -> str | None:
        if self._addrs is None:
            self._load()
        assert self._addrs is not None
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        return f"{self._names[i]}+{addr - self._addrs[i]:#x}"

    def module_symbols(self, module: str) -> dict[str, str]:
        """Text symbols of one module, as {hex address: name}."""
        out: dict[str, str] = {}
        try:
            with open(self.path) as f:
                for line in f:
                    if line.rstrip().endswith(f"[{module}]"):
                        parts = line.split()
                        if parts[1] in "tT" and int(parts[0], 16):
                            out[parts[0]] = parts[2]
        except OSError:
            pass
        return out


def drop_reasons(tracefs: str | Path) -> dict[int, str]:
    """Parse skb:kfree_skb's print fmt: __print_symbolic(REC->reason, { 2, "NO_SOCKET" }, ...)."""
    try:
        text = (Path(tracefs) / "events/skb/kfree_skb/format").read_text()
    except OSError:
        return {}
    return {int(n): name for n, name in re.findall(r"\{\s*(\d+)\s*,\s*\"(\w+)\"\s*\}", text)}
