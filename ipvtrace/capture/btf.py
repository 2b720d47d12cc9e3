"""The few struct offsets the BPF program reads, from the kernel's own BTF.

Why: with them as -D flags, bpf/ipvtrace.c includes no kernel header that
defines struct sk_buff or struct net_device, and bcc's compile (nearly all of
it spent parsing those headers: 3.1 of 3.9 s for <linux/skbuff.h> alone)
shrinks to what bcc's own prelude costs. A kernel without BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) keeps the header path.

The reader follows Documentation/bpf/btf.rst: one pass over the type section
records where each type starts; members are then looked up by name, through
anonymous structs and unions (sk_buff keeps most fields in them). The file
is the kernel's, but it is still checked: a size or offset out of bounds, a
missing member or a member of an unexpected size is a BTFError, never a
guess.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
MAX_BTF = 256 << 20   # vmlinux BTF is ~5 MiB; anything this big is not one

# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
# bytes after the 12-byte btf_type: fixed part, and per vlen entry
_EXTRA = {INT: (4, 0), PTR: (0, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12),
          ENUM: (0, 8), FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0),
          RESTRICT: (0, 0), FUNC: (0, 0), FUNC_PROTO: (0, 8), VAR: (4, 0),
          DATASEC: (0, 12), FLOAT: (0, 0), DECL_TAG: (4, 0), TYPE_TAG: (0, 0),
          ENUM64: (0, 12)}
_FOLLOW = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

# what bpf/ipvtrace.c reads: -D name -> (struct, member path, size in bytes)
FIELDS: dict[str, tuple[str, str, int]] = {
    "IPVT_OFF_SKB_HEAD": ("sk_buff", "head", 8),
    "IPVT_OFF_SKB_DATA": ("sk_buff", "data", 8),
    "IPVT_OFF_SKB_MAC_HEADER": ("sk_buff", "mac_header", 2),
    "IPVT_OFF_SKB_LEN": ("sk_buff", "len", 4),
    "IPVT_OFF_SKB_DATA_LEN": ("sk_buff", "data_len", 4),
    "IPVT_OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "IPVT_OFF_SKB_REFDST": ("sk_buff", "_skb_refdst", 8),
    "IPVT_OFF_DEV_IFINDEX": ("net_device", "ifindex", 4),
    "IPVT_OFF_DEV_NAME": ("net_device", "name", 16),
    "IPVT_OFF_DEV_NET": ("net_device", "nd_net.net", 8),
    "IPVT_OFF_NET_INUM": ("net", "ns.inum", 4),
    "IPVT_OFF_DST_DEV": ("dst_entry", "dev", 8),
}


class BTFError(ValueError):
    """The BTF could not give an offset; the message says which and why."""


def sections(data: bytes) -> tuple[int, int, bytes]:
    """A BTF blob's type section (offset, length) and its strings, checked
    against the blob's size; BTFError otherwise."""
    if len(data) < 24 or len(data) > MAX_BTF:
        raise BTFError(f"not a BTF blob ({len(data)} bytes)")
    magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BTFError(f"bad BTF magic {magic:#x} (big-endian BTF is not read)")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    if hdr_len < 24 or t0 + type_len > len(data) or s0 + str_len > len(data):
        raise BTFError("BTF header sections run past the end of the data")
    return t0, type_len, data[s0:s0 + str_len]


class BTF:
    """Types of one BTF blob (vmlinux's), indexed by id, read on demand."""

    def __init__(self, data: bytes) -> None:
        t0, type_len, self._strs = sections(data)
        self._data = data
        self._structs: dict[int, int] = {}   # a struct definition's name offset -> its id
        self._funcs: set[int] = set()         # functions' name offsets
        self._struct_ids: dict[str, int] = {}  # struct_id's answers
        self._starts = self._index(memoryview(data)[t0:t0 + type_len], t0,
                                   self._structs, self._funcs)

    @staticmethod
    def _index(types: memoryview, base: int, structs: dict[int, int] | None = None,
               funcs: set[int] | None = None) -> list[int]:
        """Where each type id starts (id 0 is void: no entry). In the same
        pass (a scan per lookup was most of the plan's BTF time): into
        *structs* each struct definition's id by its name's offset, the
        first one; into *funcs* the functions' name offsets."""
        starts = [0]
        off, end = 0, len(types)
        unpack = struct.Struct("<II").unpack_from
        extra = _EXTRA
        keep = structs if structs is not None else {}
        fns = funcs if funcs is not None else set()
        while off + 12 <= end:
            name_off, info = unpack(types, off)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = extra.get(kind, (-1, 0))
            if fixed < 0:
                raise BTFError(f"unknown BTF kind {kind} at type {len(starts)}")
            if kind == FUNC:
                fns.add(name_off)
            elif kind == STRUCT and vlen and name_off not in keep:
                keep[name_off] = len(starts)
            starts.append(base + off)
            off += 12 + fixed + per * vlen
        if off != end:
            raise BTFError("the BTF type section ends inside a type")
        return starts

    def name(self, off: int) -> str:
        if off >= len(self._strs):
            raise BTFError(f"string offset {off} out of range")
        end = self._strs.find(b"\0", off)
        return self._strs[off:end if end >= 0 else len(self._strs)].decode("ascii", "replace")

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of type *tid*."""
        if not 0 < tid < len(self._starts):
            raise BTFError(f"type id {tid} out of range")
        name_off, info, st = struct.unpack_from("<III", self._data, self._starts[tid])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, st

    def _name_offs(self, name: str) -> set[int]:
        """Where *name* is in the string section (stored once, as a rule,
        but be sure); the empty name is never a type's or member's here."""
        offs: set[int] = set()
        pat = b"\0" + name.encode() + b"\0"
        want = self._strs.find(pat)
        while want >= 0:
            offs.add(want + 1)
            want = self._strs.find(pat, want + 1)
        return offs

    def struct_id(self, name: str) -> int:
        """The id of `struct NAME` (a definition, not a forward declaration)."""
        tid = self._struct_ids.get(name)
        if tid is None:   # (the plan asks for sk_buff's members one by one)
            found = [self._structs[o] for o in self._name_offs(name) if o in self._structs]
            if not found:
                raise BTFError(f"struct {name} is not in this kernel's BTF")
            tid = self._struct_ids[name] = min(found)
        return tid

    def funcs(self, names: set[str]) -> set[str]:
        """Which of *names* are functions (BTF FUNC) here: what an fentry or
        fexit program can be attached to."""
        return {n for n in names if self._name_offs(n) & self._funcs}

    def size(self, tid: int, depth: int = 0) -> int:
        if depth > 32:
            raise BTFError("type chain too long")
        _, kind, _, _, st = self._type(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return st
        if kind == PTR:
            return 8
        if kind in _FOLLOW:
            return self.size(st, depth + 1)
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, self._starts[tid] + 12)
            return nelems * self.size(elem, depth + 1)
        raise BTFError(f"type {tid} (kind {kind}) has no size")

    def _resolve(self, tid: int, depth: int = 0) -> int:
        _, kind, _, _, st = self._type(tid)
        if kind in _FOLLOW and depth < 32:
            return self._resolve(st, depth + 1)
        return tid

    def member(self, tid: int, name: str, depth: int = 0) -> tuple[int, int] | None:
        """(byte offset, type id) of member *name* of struct/union *tid*,
        looking through anonymous members; None if it has none."""
        if depth > 8:
            return None
        _, kind, vlen, kflag, _ = self._type(self._resolve(tid))
        tid = self._resolve(tid)
        if kind not in (STRUCT, UNION):
            return None
        base = self._starts[tid] + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, base + 12 * i)
            bits = moff & 0xFFFFFF if kflag else moff
            if kflag and moff >> 24:
                continue   # a bitfield: never one of ours
            if name_off == 0:
                inner = self.member(mtype, name, depth + 1)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
            elif self.name(name_off) == name:
                if bits % 8:
                    raise BTFError(f"member {name} is not byte-aligned")
                return bits // 8, mtype
        return None

    def offset(self, struct_name: str, path: str, size: int) -> int:
        """Byte offset of `struct STRUCT_NAME`'s member PATH (a.b.c), checked to be SIZE bytes."""
        tid, off = self.struct_id(struct_name), 0
        for part in path.split("."):
            m = self.member(tid, part)
            if m is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel's BTF")
            off, tid = off + m[0], m[1]
        got = self.size(tid)
        if got != size:
            raise BTFError(f"{struct_name}.{path} is {got} bytes here, ipvtrace reads {size}")
        return off


def module_funcs(base: BTF, data: bytes, names: set[str]) -> dict[str, tuple[int, int]]:
    """(BTF type id, number of arguments) of those of *names* that are
    functions of a module (its /sys/kernel/btf/MODULE: split BTF, whose type
    ids and string offsets continue vmlinux's, *base*): what an fentry/fexit
    program on a module function is loaded with, and where an fexit finds
    the return value. BTFError for a damaged blob."""
    t0, type_len, strs = sections(data)
    nbase, sbase = len(base._starts), len(base._strs)
    offs: dict[int, str] = {}
    for name in names:
        want = strs.find(b"\0" + name.encode() + b"\0")
        while want >= 0:
            offs[sbase + want + 1] = name
            want = strs.find(b"\0" + name.encode() + b"\0", want + 1)
        if strs.startswith(name.encode() + b"\0"):
            offs[sbase] = name
    out: dict[str, tuple[int, int]] = {}
    unpack = struct.Struct("<III").unpack_from
    starts = BTF._index(memoryview(data)[t0:t0 + type_len], t0)
    for k, start in enumerate(starts[1:]):
        name_off, info, proto = unpack(data, start)
        if name_off in offs and (info >> 24) & 0x1F == FUNC and offs[name_off] not in out:
            if proto >= nbase and proto - nbase + 1 < len(starts):
                p_info = unpack(data, starts[proto - nbase + 1])[1]
                kind, nargs = (p_info >> 24) & 0x1F, p_info & 0xFFFF
            else:
                _, kind, nargs, _, _ = base._type(proto)
            if kind != FUNC_PROTO:
                raise BTFError(f"function {offs[name_off]} has no prototype (type {proto})")
            out[offs[name_off]] = (nbase + k, nargs)
    return out


def offsets(data: "bytes | BTF") -> dict[str, int]:
    """FIELDS' offsets from a BTF blob (or one already read), as -D name -> value."""
    btf = data if isinstance(data, BTF) else BTF(data)
    return {k: btf.offset(*v) for k, v in FIELDS.items()}


def optional_offset(btf: "BTF | None", struct_name: str, path: str, size: int) -> int | None:
    """A member that only some kernels have: its offset, or None."""
    if btf is None:
        return None
    try:
        return btf.offset(struct_name, path, size)
    except BTFError:
        return None


def tracepoint_cflags(data: bytes) -> list[str]:
    """The skb tracepoint fields a kernel has, from its BTF (the structs its
    tracepoints record: trace_event_raw_*), as probes.py reads them from
    tracefs on the running kernel: for a compile against another kernel."""
    btf = BTF(data)
    out = []
    for struct_name, member, flag in (("trace_event_raw_kfree_skb", "reason", "IPVT_HAVE_DROP_REASON"),
                                      ("trace_event_raw_consume_skb", "location",
                                       "IPVT_HAVE_CONSUME_LOCATION")):
        try:
            if btf.member(btf.struct_id(struct_name), member) is not None:
                out.append(f"-D{flag}")
        except BTFError:
            pass   # no such tracepoint struct: the field is not there either
    return out


def tracepoint_offsets(btf: "BTF", event: str, fields: dict[str, int]) -> dict[str, int]:
    """The offsets of those *fields* (name: size) a tracepoint's record has
    at that size, from the kernel's trace_event_raw_EVENT struct: what its
    tracefs format file says on the running kernel."""
    offs = {name: optional_offset(btf, f"trace_event_raw_{event}", name, size)
            for name, size in fields.items()}
    return {k: v for k, v in offs.items() if v is not None}


def read_offsets(path: Path = VMLINUX_BTF) -> dict[str, int]:
    """FIELDS' offsets from this kernel's BTF; BTFError when it has none."""
    return offsets(read(path))


def read(path: Path = VMLINUX_BTF) -> bytes:
    """This kernel's BTF blob; BTFError when it has none."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size   # sysfs gives the blob's size
            if not 0 < size <= MAX_BTF:
                raise BTFError(f"{path}: {size} bytes is not a vmlinux BTF")
            data = f.read(size + 1)   # (asking for far more costs a large buffer)
    except OSError as exc:
        raise BTFError(f"{path}: {exc.strerror} (a kernel without CONFIG_DEBUG_INFO_BTF)") from exc
    return data


def cflags(offs: dict[str, int]) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted(offs.items())]
