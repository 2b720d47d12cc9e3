"""The event layout, read from bpf/ipvtrace.h: the one place C and Python share.

Parsing the header (instead of keeping a second hand-written copy) keeps the
BPF program, the live decoder and the recording format in step. A recording
stores the layout it was written with, so replay never needs the header.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]     # ipvtrace/
BPF_DIR = _PKG / "bpf"                          # installed: ipvtrace/bpf/
if not BPF_DIR.is_dir():  # source checkout: bpf/ sits beside the package
    BPF_DIR = _PKG.parent / "bpf"
HEADER = BPF_DIR / "ipvtrace.h"

_CTYPES = {
    "__u64": "Q", "__s64": "q", "__u32": "I", "__s32": "i",
    "__u16": "H", "__s16": "h", "__u8": "B", "__s8": "b", "char": "s",
}


@dataclass(frozen=True)
class Struct:
    """Field names and a little-endian struct format of one C struct."""

    fields: tuple[str, ...]
    fmt: str

    def to_json(self) -> dict:
        return {"fields": list(self.fields), "fmt": self.fmt}

    @classmethod
    def from_json(cls, d: dict) -> "Struct":
        return cls(tuple(d["fields"]), d["fmt"])


@dataclass(frozen=True)
class Layout:
    """Field names and a struct format for `struct ipvt_event`, and (format
    3 on) for a closed context's record and its hits (`struct ipvt_rec`,
    `struct ipvt_hit`)."""

    fields: tuple[str, ...]
    fmt: str
    probes: dict[int, str]
    flags: dict[str, int]
    hdr_max: int
    format_version: int
    stats: dict[int, str] | None = None   # enum ipvt_stat: index -> name
    rec: Struct | None = None              # None: a recording of format 1 or 2
    hit: Struct | None = None
    runs_base: int | None = None           # IPVT_S_RUNS_BASE (the live tracer's only)

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)

    @property
    def base_size(self) -> int:
        """Size of an event submitted without its packet bytes."""
        return self.size - self.hdr_max

    def to_json(self) -> dict:
        d = {
            "fields": list(self.fields), "fmt": self.fmt,
            "probes": {str(k): v for k, v in self.probes.items()},
            "flags": self.flags, "hdr_max": self.hdr_max,
            "format_version": self.format_version,
        }
        if self.rec is not None and self.hit is not None:
            d["rec"] = self.rec.to_json()
            d["hit"] = self.hit.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(
            fields=tuple(d["fields"]), fmt=d["fmt"],
            probes={int(k): v for k, v in d["probes"].items()},
            flags={k: int(v) for k, v in d["flags"].items()},
            hdr_max=int(d["hdr_max"]), format_version=int(d["format_version"]),
            rec=Struct.from_json(d["rec"]) if "rec" in d else None,
            hit=Struct.from_json(d["hit"]) if "hit" in d else None,
        )


def parse_header(text: str) -> Layout:
    defines = {
        m.group(1): int(m.group(2), 0)
        for m in re.finditer(r"#define\s+(IPVT_\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)
    }
    enum = re.search(r"enum ipvt_probe\s*\{(.*?)\};", text, re.S)
    if not enum:
        raise ValueError("enum ipvt_probe not found")
    probes = {
        int(v): name.removeprefix("IPVT_P_").lower()
        for name, v in re.findall(r"(IPVT_P_\w+)\s*=\s*(\d+)", enum.group(1))
        if name != "IPVT_P_MAX"
    }
    fields, fmt = _struct(text, "ipvt_event")
    flags = {
        k.removeprefix("IPVT_F_").lower(): v for k, v in defines.items() if k.startswith("IPVT_F_")
    }
    stat_enum = re.search(r"enum ipvt_stat\s*\{(.*?)\};", text, re.S)
    stat_ids = {name: int(v) for name, v in re.findall(
        r"(IPVT_S_\w+)\s*=\s*(\d+)", stat_enum.group(1) if stat_enum else "")}
    stats = {
        v: name.removeprefix("IPVT_S_").lower() for name, v in stat_ids.items()
        if name not in ("IPVT_S_MAX", "IPVT_S_LOST_BASE", "IPVT_S_RUNS_BASE")
    }
    rec_fields, rec_fmt = _struct(text, "ipvt_rec")
    hit_fields, hit_fmt = _struct(text, "ipvt_hit")
    return Layout(
        fields=tuple(fields), fmt=fmt, probes=probes, flags=flags,
        hdr_max=defines["IPVT_HDR_MAX"], format_version=defines["IPVT_FORMAT_VERSION"],
        stats=stats, rec=Struct(tuple(rec_fields), rec_fmt),
        hit=Struct(tuple(hit_fields), hit_fmt), runs_base=stat_ids.get("IPVT_S_RUNS_BASE"),
    )


def _struct(text: str, name: str) -> tuple[list[str], str]:
    """Field names and a little-endian struct format for `struct NAME`."""
    body = re.search(r"struct " + name + r"\s*\{(.*?)\};", text, re.S)
    if not body:
        raise ValueError(f"struct {name} not found")
    fields: list[str] = []
    fmt = "<"
    for ctype, fname, count in re.findall(r"(\w+)\s+(\w+)(?:\[(\d+)\])?;", body.group(1)):
        code = _CTYPES[ctype]
        n = int(count) if count else 1
        if code == "s" or (code == "B" and n > 1):
            fmt += f"{n}s"
        else:
            fmt += code * n
        fields.append(fname)
    return fields, fmt


@dataclass(frozen=True)
class SigLayout:
    """`struct ipvt_sig`, the key of the stats-mode counter map, its IPVT_H_*
    bits (what the context saw) and IPVT_C_* bits (checks that failed)."""

    fields: tuple[str, ...]
    fmt: str
    hflags: dict[str, int]
    probes: dict[int, str]
    checks: dict[str, int]


@lru_cache(maxsize=1)
def sig_layout() -> SigLayout:
    text = HEADER.read_text()
    fields, fmt = _struct(text, "ipvt_sig")
    hflags = {
        m.group(1).lower(): int(m.group(2), 0)
        for m in re.finditer(r"#define\s+IPVT_H_(\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)
    }
    checks = {
        m.group(1).lower(): int(m.group(2), 0)
        for m in re.finditer(r"#define\s+IPVT_C_(\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)
    }
    return SigLayout(tuple(fields), fmt, hflags, current().probes, checks)


@lru_cache(maxsize=1)
def current() -> Layout:
    """The layout of this ipvtrace build."""
    return parse_header(HEADER.read_text())
