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

from ipvtrace.model.alike import Plan
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
        self._shapes: _ShapeKeys | None = None
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
            self._shapes = _ShapeKeys.of(lay, self._kinds)

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

    def shape(self, raw: bytes) -> Shape | None:
        """A context record's shape (`Shape`); None for an event, a record
        of a layout without context records, or one that does not parse
        (decoding it says why)."""
        if (self._shapes is None or len(raw) <= self._probe_at + 1
                or raw[self._probe_at] | raw[self._probe_at + 1] << 8 != self._ctx_id):
            return None
        return self._shapes.shape(raw)

    def alike_plan(self, raw: bytes) -> Plan | None:
        """Where a context record like *raw* keeps what its Shape keys on and
        what the correlator reads (alike.check). *raw* is a record shape()
        gave a Shape for (its format is known); None for a layout the views
        cannot read."""
        return self._shapes.alike_plan(raw) if self._shapes is not None else None

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


@dataclass(slots=True)
class Shape:
    """A context record without what differs between packets of one flow.

    `key` holds every field of the record and its hits except the times,
    the context id, CPU and task, the skb and data pointers, the lengths
    and the frame's bytes (and how many were captured). The pointers are
    kept as their pattern (which of them are equal, which are zero): the
    rules compare them but never read their values. Of the lengths and
    bytes the rules read only `runt` and the frame's
    `packet.rule_facts`. Two records that agree on all of that give
    packets of one branch (replay --stats counts by it; `stats` keeps no
    more of a frame in the kernel). The rest is what the correlator needs
    to know whether the record closes a packet of its own at this point
    in the stream."""

    key: tuple
    frame: bytes      # the frame's captured bytes: only what the rules read of them is alike
    has_mac: bool
    runt: bool        # as Evidence.runt: the frame and skb->len are shorter than an Ethernet header
    rx: bool          # ipvlan_handle_frame's context (an RX echo may be waiting for it)
    ts: int
    end: int          # its return's timestamp (the latest in the record, see `key`)
    ctx: int
    skb: int
    head: int
    events: int       # how many events it decodes into
    vol: tuple        # the differing fields' values (pipeline's reused rows read them) ...
    at: dict          # ... and where each is in it: "ts", "cpu", "skb", "ret_dt", "dt.0", "skb.0", ...


_REC_VOLATILE = frozenset(("ts", "skb", "head", "ctx", "ret_dt", "cpu", "pid", "len", "hdr_len"))
_HIT_VOLATILE = frozenset(("skb", "head", "dt", "len"))
# (length, hits, frame bytes) combinations kept: a stranger's file may hold any number
_SHAPE_FORMATS_MAX = 256


def _getter(idx: list[int]):
    """itemgetter that always returns a tuple (itemgetter(i) returns the item)."""
    if len(idx) == 1:
        i = idx[0]
        return lambda v: (v[i],)
    return operator.itemgetter(*idx) if idx else (lambda v: ())


class _ShapeKeys:
    """Builds Shape keys with two struct unpacks per record, each reading
    only its own fields (the others are pad bytes to it): one pair of
    structs per (length, hits, frame bytes), made on first sight."""

    @classmethod
    def of(cls, lay: Layout, kinds: dict) -> "_ShapeKeys | None":
        """None when the layout (a file's: a stranger's) is not one this can key."""
        try:
            return cls(lay, kinds)
        except (KeyError, ValueError, struct.error):
            return None

    def __init__(self, lay: Layout, kinds: dict) -> None:
        rec, hit = lay.rec, lay.hit
        self._rec, self._hit = _tokens(rec.fields, rec.fmt), _tokens(hit.fields, hit.fmt)
        self._rs = sum(size for _, _, size in self._rec)
        self._hs = sum(size for _, _, size in self._hit)
        self._hdr_max = lay.hdr_max
        self._no_mac = lay.flags.get("no_mac", 0)
        self._rx = {k for k, (entry, _) in kinds.items() if entry == "rx"}
        self._kinds = kinds
        offs, at = {}, 0
        for name, _, size in self._rec:
            offs[name], at = at, at + size
        tok = self._tok = {name: t for name, t, _ in self._rec}
        # nhits, kind and hdr_len in one unpack: the fields between are pad bytes to it
        fmt, at, order = "<", 0, sorted(("nhits", "kind", "hdr_len"), key=offs.__getitem__)
        for name in order:
            fmt += f"{offs[name] - at}x{tok[name]}"
            at = offs[name] + struct.calcsize("<" + tok[name])
        self._counts = struct.Struct(fmt)
        self._counts_order = operator.itemgetter(
            *(order.index(n) for n in ("nhits", "kind", "hdr_len")))
        if not (_REC_VOLATILE | {"flags"} <= set(tok) and _HIT_VOLATILE <= set(hit.fields)):
            raise KeyError("a field the keys need")
        self._formats: dict[tuple[int, int, int], tuple] = {}
        self._offs = offs
        self._hit_offs, at = {}, 0
        for name, _, size in self._hit:
            self._hit_offs[name], at = at, at + size
        self._plans: dict[tuple[int, int, int], Plan | None] = {}

    def shape(self, raw: bytes) -> Shape | None:
        n = len(raw)
        if n < self._rs:
            return None
        nhits, kind, hdr_len = self._counts_order(self._counts.unpack_from(raw))
        f = self._formats.get((n, nhits, hdr_len))
        if f is None:
            f = self._format(n, nhits, hdr_len)
            if f is None:
                return None
        rec_mask, hits_at, hits_mask, vol_st, fixed, ptrs, dts, at = f
        vol = vol_st.unpack_from(raw)
        ts, ret_dt, ctx, skb, head, length, flags = fixed(vol)
        d = dts(vol)
        if kind not in self._kinds or (d and max(d) > ret_dt):
            return None   # decoding names the kind; a hit after the return is the correlator's
        p = (0,) + ptrs(vol)
        # the record's and its hits' bytes, volatile ones zeroed, as two ints:
        # one C call each where unpacking every field took a tuple of dozens
        return Shape((int.from_bytes(raw[:self._rs], "little") & rec_mask,
                      int.from_bytes(raw[hits_at:], "little") & hits_mask, nhits)
                     + tuple(map(p.index, p)),
                     raw[self._rs:self._rs + hdr_len], not flags & self._no_mac,
                     0 < hdr_len < 14 and length < 14, kind in self._rx, ts, ts + ret_dt,
                     ctx, skb, head, nhits + 2, vol, at)

    def alike_plan(self, raw: bytes) -> Plan | None:
        """The alike.Plan of records of raw's length, hits and frame length
        (raw has a shape: its format is known). The key bytes are Shape's
        (the frame's aside) and the frame's length."""
        nhits, _, hdr_len = self._counts_order(self._counts.unpack_from(raw))
        fkey = (len(raw), nhits, hdr_len)
        if fkey in self._plans:
            return self._plans[fkey]
        f = self._formats.get(fkey)
        if f is None:
            return None
        rec_mask, hits_at, hits_mask = f[0], f[1], f[2]
        mask = bytearray(rec_mask.to_bytes(self._rs, "little"))
        at = self._offs["hdr_len"]
        mask[at:at + 2] = b"\xff\xff"
        mask += bytes(hits_at - self._rs) + hits_mask.to_bytes(nhits * self._hs, "little")
        ho = self._hit_offs
        hit = [hits_at + i * self._hs for i in range(nhits)]
        ptrs = [self._offs["skb"], self._offs["head"]]
        for h in hit:
            ptrs += [h + ho["skb"], h + ho["head"]]
        if len(self._plans) >= _SHAPE_FORMATS_MAX:
            self._plans.clear()
        plan = self._plans[fkey] = Plan.of(
            len(raw), bytes(mask), self._rs, ts=self._offs["ts"], ctx=self._offs["ctx"],
            ret_dt=self._offs["ret_dt"], dts=tuple(h + ho["dt"] for h in hit), ptrs=tuple(ptrs),
            cpu=self._offs["cpu"] if self._tok["cpu"] == "I" else None)
        return plan

    def _format(self, n: int, nhits: int, hdr_len: int) -> tuple | None:
        room = (hdr_len + 7) & ~7
        if hdr_len > self._hdr_max or self._rs + room + nhits * self._hs != n:
            return None
        if len(self._formats) >= _SHAPE_FORMATS_MAX:
            self._formats.clear()
        items = [(name, False, t, size) for name, t, size in self._rec]
        items.append(("frame", False, f"{room}s", room))
        for i in range(nhits):
            items += [(f"{name}.{i}", True, t, size) for name, t, size in self._hit]
        vol_fmt, vol_names = "<", []
        rec_mask, hits_mask = bytearray(), bytearray()
        for name, in_hit, t, size in items:
            base = name.rsplit(".", 1)[0] if in_hit else name
            volatile = base in (_HIT_VOLATILE if in_hit else _REC_VOLATILE | {"frame"})
            if name != "frame":
                (hits_mask if in_hit else rec_mask).extend((b"\0" if volatile else b"\xff") * size)
            if (volatile and name != "frame") or name == "flags":
                vol_fmt += t
                vol_names.append(name)
            else:
                vol_fmt += f"{size}x"
        at = {name: i for i, name in enumerate(vol_names)}
        fixed = operator.itemgetter(*(at[x] for x in ("ts", "ret_dt", "ctx", "skb", "head", "len",
                                                      "flags")))
        ptrs = _getter([at["skb"], at["head"]]
                       + [at[f"{v}.{i}"] for i in range(nhits) for v in ("skb", "head")])
        dts = _getter([at[f"dt.{i}"] for i in range(nhits)])
        f = self._formats[(n, nhits, hdr_len)] = (
            int.from_bytes(rec_mask, "little"), self._rs + room, int.from_bytes(hits_mask, "little"),
            struct.Struct(vol_fmt), fixed, ptrs, dts, at)
        return f


def _tokens(fields: tuple[str, ...], fmt: str) -> list[tuple[str, str, int]]:
    """(name, struct code, size) of each field of a packed little-endian struct."""
    codes = re.findall(r"\d*[A-Za-z]", fmt[1:])
    if not fmt.startswith("<") or len(codes) != len(fields) or len(set(fields)) != len(fields):
        raise ValueError("not a packed little-endian struct whose fields its format names")
    return [(name, code, struct.calcsize("<" + code)) for name, code in zip(fields, codes)]
