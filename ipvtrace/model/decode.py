"""Raw ring records -> Event objects (the first pipeline stage after the source).

The ring carries two kinds of record, told apart by `probe` (same offset in
both): an event (struct ipvt_event: the multicast worker's, the L3S hooks')
and, from format 3, a closed context (struct ipvt_rec: an entry, its frame,
its helpers' hits, its return), which decodes into the entry, hit and return
events the correlator groups (the same events format 2 sent one by one).
"""
from __future__ import annotations

import operator
import re
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


_REC = ("ts", "skb", "head", "ctx", "nhits", "kind", "ret_dt", "ret", "cpu", "pid", "netns",
        "ifindex", "len", "depth", "flags", "hdr_len", "ifname")
_HIT = ("skb", "head", "aux", "aux2", "ret", "dt", "netns", "ifindex", "reason", "len", "probe",
        "flags", "ifname")


_NAMES: dict[bytes, str] = {}   # a run names a handful of devices, each thousands of times


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        if len(_NAMES) >= 4096:    # a file from a stranger may name any number
            _NAMES.clear()
        name = _NAMES[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
    return name


_HEAD = ("ts", "skb", "head", "ctx", "aux", "aux2", "ret", "cpu", "pid", "netns", "ifindex",
         "reason", "len")


def field_offsets(fields: tuple[str, ...], fmt: str) -> dict[str, int]:
    """Each field's byte offset in a packed little-endian struct."""
    out, pos = {}, 0
    for name, (count, code) in zip(fields, re.findall(r"(\d*)([A-Za-z])", fmt[1:])):
        out[name] = pos
        pos += struct.calcsize("<" + count + code)
    return out


class Decoder:
    """Decodes records of one layout; replay builds it from the file's header."""

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
        self._lost = lay.flags.get("lost", 0)
        self._ctx_id = -1           # no context records in this layout (format 1, 2)
        if lay.rec is not None and lay.hit is not None:
            ids = {v: k for k, v in lay.probes.items()}
            self._ctx_id = ids.get("context", -1)
            self._probe_at = field_offsets(lay.fields, lay.fmt)["probe"]
            self._rec = struct.Struct(lay.rec.fmt)
            self._hit = struct.Struct(lay.hit.fmt)
            ri = {n: i for i, n in enumerate(lay.rec.fields)}
            hi = {n: i for i, n in enumerate(lay.hit.fields)}
            self._rec_get = operator.itemgetter(*(ri[n] for n in _REC))
            self._hit_get = operator.itemgetter(*(hi[n] for n in _HIT))
            # the entry probes a context can be, and their returns
            self._kinds = {k: (v, v + "_ret") for k, v in lay.probes.items()
                           if v in ("xmit", "rx") and v + "_ret" in ids}

    def events(self, raw: bytes) -> list[Event]:
        """One ring record: a context's events, or one event."""
        if (self._ctx_id >= 0 and len(raw) > self._probe_at + 1
                and raw[self._probe_at] | raw[self._probe_at + 1] << 8 == self._ctx_id):
            return self._context(raw)
        return [self.decode(raw)]

    def _context(self, raw: bytes) -> list[Event]:
        n = len(raw)
        rs, hs = self._rec.size, self._hit.size
        if n < rs:
            raise DecodeError(f"context record of {n} bytes (at least {rs})")
        (ts, skb, head, ctx, nhits, kind, ret_dt, ret, cpu, pid, netns, ifindex, length,
         depth, flags, hdr_len, ifname) = self._rec_get(self._rec.unpack_from(raw, 0))
        names = self._kinds.get(kind)
        if names is None:
            raise DecodeError(f"context record of unknown kind {kind}")
        hits_at = rs + ((hdr_len + 7) & ~7)
        if hdr_len > self.layout.hdr_max or hits_at + nhits * hs != n:
            raise DecodeError(f"context record of {n} bytes says {hdr_len} frame bytes "
                              f"and {nhits} hits")
        lost = self._lost
        out = [Event(ts, skb, head, ctx, 0, 0, 0, cpu, pid, netns, ifindex, 0, length,
                     names[0], depth, flags & ~lost, bytes(raw[rs:rs + hdr_len]), _name(ifname))]
        probes = self._probes
        for at in range(hits_at, n, hs):
            (h_skb, h_head, aux, aux2, h_ret, dt, h_netns, h_ifindex, reason, h_len, probe,
             h_flags, h_ifname) = self._hit_get(self._hit.unpack_from(raw, at))
            try:
                pname = probes[probe]
            except KeyError:
                raise DecodeError(f"context hit of unknown probe id {probe}") from None
            out.append(Event(ts + dt, h_skb, h_head, ctx, aux, aux2, h_ret, cpu, pid, h_netns,
                             h_ifindex, reason, h_len, pname, depth, h_flags, b"",
                             _name(h_ifname)))
        out.append(Event(ts + ret_dt, 0, 0, ctx, 0, 0, ret, cpu, pid, 0, 0, 0, 0, names[1],
                         depth, flags & lost, b"", ""))
        return out

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
            _name(vals[self._i_ifname]),
        )
