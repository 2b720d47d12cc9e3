"""Raw event bytes -> Event objects (the first pipeline stage after the source)."""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass

from ipvtrace.model.layout import Layout


class DecodeError(ValueError):
    """An event record does not match the layout."""


@dataclass(slots=True)
class Event:
    ts: int
    skb: int
    head: int
    ctx: int
    aux: int
    aux2: int
    ret: int
    cpu: int
    pid: int
    netns: int
    ifindex: int
    reason: int
    len: int
    probe: str
    depth: int
    flags: int
    hdr: bytes
    ifname: str

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


_HEAD = ("ts", "skb", "head", "ctx", "aux", "aux2", "ret", "cpu", "pid", "netns", "ifindex",
         "reason", "len")


class Decoder:
    """Decodes events of one layout; replay builds it from the file's header."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self._st = struct.Struct(lay.fmt)
        self._base = lay.base_size
        self._pad = b"\0" * lay.hdr_max
        idx = {name: i for i, name in enumerate(lay.fields)}
        self._probes = lay.probes
        # Event's leading fields straight from the struct, in Event's order:
        # one C-level pick per event instead of a dict lookup per field
        self._head = operator.itemgetter(*(idx[n] for n in _HEAD))
        self._i_probe, self._i_depth, self._i_flags = idx["probe"], idx["depth"], idx["flags"]
        self._i_hdr_len, self._i_hdr, self._i_ifname = idx["hdr_len"], idx["hdr"], idx["ifname"]

    def decode(self, raw: bytes) -> Event:
        """An event is its fixed part and then only the captured bytes of the
        frame (hdr_len of them, at most hdr_max); older recordings padded
        every captured frame to hdr_max."""
        n = len(raw)
        if n == self._st.size:
            vals = self._st.unpack(raw)
        elif self._base <= n < self._st.size:
            vals = self._st.unpack(raw + self._pad[:self._st.size - n])
        else:
            raise DecodeError(f"event of {n} bytes (expected {self._base} to {self._st.size})")
        probe_id = vals[self._i_probe]
        try:
            probe = self._probes[probe_id]
        except KeyError:
            raise DecodeError(f"unknown probe id {probe_id}") from None
        hdr_len = vals[self._i_hdr_len]
        if hdr_len > n - self._base:
            raise DecodeError(f"event says {hdr_len} captured bytes but carries {n - self._base}")
        return Event(
            *self._head(vals), probe, vals[self._i_depth], vals[self._i_flags],
            vals[self._i_hdr][:hdr_len],
            vals[self._i_ifname].split(b"\0", 1)[0].decode(errors="replace"),
        )
