"""Raw event bytes -> Event objects (the first pipeline stage after the source)."""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass

from .layout import Layout


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
        n = len(raw)
        full = n == self._st.size
        if full:
            vals = self._st.unpack(raw)
        elif n == self._base:
            vals = self._st.unpack(raw + self._pad)
        else:
            raise DecodeError(f"event of {n} bytes (expected {self._base} or {self._st.size})")
        probe_id = vals[self._i_probe]
        try:
            probe = self._probes[probe_id]
        except KeyError:
            raise DecodeError(f"unknown probe id {probe_id}") from None
        return Event(
            *self._head(vals), probe, vals[self._i_depth], vals[self._i_flags],
            vals[self._i_hdr][:vals[self._i_hdr_len]] if full else b"",
            vals[self._i_ifname].split(b"\0", 1)[0].decode(errors="replace"),
        )
