"""Raw event bytes -> Event objects (the first pipeline stage after the source)."""
from __future__ import annotations

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


class Decoder:
    """Decodes events of one layout; replay builds it from the file's header."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self._st = struct.Struct(lay.fmt)
        self._base = lay.base_size
        self._pad = b"\0" * lay.hdr_max
        idx = {name: i for i, name in enumerate(lay.fields)}
        self._i = idx
        self._probes = lay.probes

    def decode(self, raw: bytes) -> Event:
        n = len(raw)
        if n == self._st.size:
            vals = self._st.unpack(raw)
        elif n == self._base:
            vals = self._st.unpack(raw + self._pad)
        else:
            raise DecodeError(f"event of {n} bytes (expected {self._base} or {self._st.size})")
        i = self._i
        hdr_len = vals[i["hdr_len"]]
        probe_id = vals[i["probe"]]
        try:
            probe = self._probes[probe_id]
        except KeyError:
            raise DecodeError(f"unknown probe id {probe_id}") from None
        return Event(
            ts=vals[i["ts"]], skb=vals[i["skb"]], head=vals[i["head"]], ctx=vals[i["ctx"]],
            aux=vals[i["aux"]], aux2=vals[i["aux2"]], ret=vals[i["ret"]], cpu=vals[i["cpu"]],
            pid=vals[i["pid"]], netns=vals[i["netns"]], ifindex=vals[i["ifindex"]],
            reason=vals[i["reason"]], len=vals[i["len"]], probe=probe,
            depth=vals[i["depth"]], flags=vals[i["flags"]],
            hdr=vals[i["hdr"]][:hdr_len] if n == self._st.size else b"",
            ifname=vals[i["ifname"]].split(b"\0", 1)[0].decode(errors="replace"),
        )
