"""Many context records at once: are they all like the first, and what does
the correlator need of them? Answered with a few C-level operations on
strided views of the records (one per field, not one per record), so that
replay --stats counts a flood without a Python step per packet.

"Like the first" is decode.Shape's key: every byte of the record and its
hits but the volatile fields, the same pointer pattern (which pointers are
equal, which are zero), the same frame length, and the frame bytes the rules
read (packet.rule_fact_bytes). Two records that agree there count as the
same branch (pipeline.count). The volatile fields the correlator reads
(times, context ids) come back as views, one value per record.
"""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the fields are in records of one (length, hits, frame length),
    as decode._ShapeKeys lays them out. Offsets are from a record's start."""

    length: int
    words: tuple[int, ...]    # 8-aligned u64s wholly in the key
    dwords: tuple[int, ...]   # 4-aligned u32s wholly in the key, in words that are not
    single: tuple[int, ...]   # every other key byte (the frame's not included)
    frame: int                # where the frame's bytes start
    ts: int                   # u64
    ctx: int                  # u64
    ret_dt: int               # u32, from ts
    dts: tuple[int, ...]      # u32 each, the hits' times from ts
    ptrs: tuple[int, ...]     # u64 each: the pointers of Shape's pattern, in its order
    cpu: int | None = None    # u32; None when the layout's CPU is not one

    def vol(self, name: str, pattern: tuple[int, ...] = ()) -> tuple[int, str]:
        """Where the volatile field Shape.at calls *name* is ("ts", "cpu",
        "skb", "ret_dt", "dt.1", "skb.1"), and its struct code; KeyError for
        another. With the records' pointer *pattern* (Shape.key[3:]), a
        pointer's place is the first one equal to it in every record: equal
        values share one place."""
        base, _, i = name.partition(".")
        if name == "ts":
            return self.ts, "Q"
        if name == "ret_dt":
            return self.ret_dt, "I"
        if name == "cpu" and self.cpu is not None:
            return self.cpu, "I"
        if base == "skb":
            j = 2 + 2 * int(i) if i else 0
            if pattern and pattern[1 + j]:
                j = pattern[1 + j] - 1
            return self.ptrs[j], "Q"
        if base == "dt" and i:
            return self.dts[int(i)], "I"
        raise KeyError(name)

    @classmethod
    def of(cls, length: int, key_mask: bytes, frame: int, **fields) -> "Plan | None":
        """A plan when every field is aligned as the views need (it is in
        the layouts ipvtrace writes); None for a stranger's layout that is not."""
        words, dwords, single = [], [], []
        for w in range(0, length - length % 8, 8):
            if key_mask[w:w + 8] == b"\xff" * 8:
                words.append(w)
                continue
            for d in (w, w + 4):
                m = key_mask[d:d + 4]
                if m == b"\xff" * 4:
                    dwords.append(d)
                else:
                    single += [d + i for i, b in enumerate(m) if b]
        single += [i for i in range(length - length % 8, length) if key_mask[i]]
        aligned = (fields["ts"] % 8 == 0 and fields["ctx"] % 8 == 0 and fields["ret_dt"] % 4 == 0
                   and (fields.get("cpu") or 0) % 4 == 0
                   and all(d % 4 == 0 for d in fields["dts"])
                   and all(p % 8 == 0 for p in fields["ptrs"]))
        if not aligned or length % 8:
            return None
        return cls(length, tuple(words), tuple(dwords), tuple(single), frame, **fields)


@dataclass(slots=True)
class Alike:
    """What the correlator needs of records found alike: closes_alone's
    inputs for all of them at once."""

    min_ts: int
    max_end: int
    ctxs: memoryview


def _columns(view: memoryview, fmt: str, at: int, step: int, count: int):
    """o -> the *fmt* field at offset o of every record, as one strided view."""
    width = struct.calcsize(fmt)
    v = view.cast(fmt)
    first, stride, stop = at // width, step // width, (at + (count - 1) * step) // width + 1
    return lambda o: v[first + o // width:stop + o // width:stride]


def column(blob: bytes, at: int, step: int, count: int, where: tuple[int, str]) -> memoryview:
    """The field *where* (offset, struct code: Plan.vol) of the records at
    blob[at + i*step], i < count, one value per record: for runs check()
    found alike (its alignment holds)."""
    off, fmt = where
    return _columns(memoryview(blob), fmt, at, step, count)(off)


def check(blob: bytes, at: int, step: int, count: int, plan: Plan, pattern: tuple[int, ...],
          frame_bytes: tuple[int, ...]) -> Alike | None:
    """Records at blob[at + i*step] for i < count: Alike when all are like
    the first (its pointer *pattern* as Shape keys it, its frame's
    *frame_bytes*), and no hit of any is timed after its return (decode's
    shape() sends those the long way); else None. *step* and *at* are
    multiples of 8 (ring records are 8-byte aligned), and len(blob) too."""
    last = at + (count - 1) * step
    if step % 8 or at % 8 or len(blob) % 8 or count < 2 or last + plan.length > len(blob):
        return None
    for o in (*plan.single, *(plan.frame + f for f in frame_bytes)):
        p = blob[at + o:last + o + 1:step]
        if p.count(p[0]) != count:
            return None
    view = memoryview(blob)
    u64 = _columns(view, "Q", at, step, count)
    u32 = _columns(view, "I", at, step, count)
    for column, offsets in ((u64, plan.words), (u32, plan.dwords)):
        for o in offsets:
            p = column(o)
            if p[1:] != p[:-1]:
                return None
    # the pointer pattern: each pointer equal to its class's first (zero is class 0),
    # and the classes' firsts nonzero and unequal in every record
    zero = memoryview(bytes(8 * count)).cast("Q")
    reps: list[memoryview] = []
    for i, cls in enumerate(pattern[1:], 1):
        p = u64(plan.ptrs[i - 1])
        if cls == 0:
            if p != zero:
                return None
        elif cls != i:
            if p != u64(plan.ptrs[cls - 1]):
                return None
        else:
            if 0 in p or any(any(map(operator.eq, p, r)) for r in reps):
                return None
            reps.append(p)
    ret_dt = u32(plan.ret_dt)
    if plan.dts:
        low = min(ret_dt)
        for o in plan.dts:
            dt = u32(o)
            if max(dt) > low and any(map(operator.gt, dt, ret_dt)):
                return None
    ts = u64(plan.ts)
    return Alike(min(ts), max(map(operator.add, ts, ret_dt)), u64(plan.ctx))
