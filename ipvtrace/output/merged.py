"""The merged file (`ipvtrace merge`): several nodes' recordings in one file.

Layout (little endian)::

    b"IPVTMRG\\0" u16 version
    u32 length, JSON: {"format": "ipvtrace-merged", "version": 1,
                       "nodes": [{"name": str, "bytes": int}, ...],
                       "clock": {...}}   (what merge found; replay finds it again)
    then each node's recording, byte for byte, "bytes" long, in that order

Each part is a whole recording and is checked as one (output/recording.py);
the header is checked before any part is touched, each length against the
file, so a malformed file is one RecordingError with memory bounded by the
file's size (the file is mapped, parts are views of it).
"""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ipvtrace.output import recording
from ipvtrace.output.files import private_open
from ipvtrace.output.recording import RecordingError

MAGIC = b"IPVTMRG\0"
VERSION = 1
HEAD = struct.Struct("<I")
MAX_NODES = 16
MAX_HEADER = 1 << 20
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass
class Part:
    name: str
    recording: recording.Recording


@dataclass
class Merged:
    header: dict
    parts: list[Part]


def is_merged(path: Path) -> bool:
    """True when *path* starts with the merged file's magic (False when it
    cannot be read: the recording reader then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"bad node name {name!r}: 1-64 of letters, digits, '_.:-'")
    return name


def write(path: Path, names: list[str], sources: list[Path], clock: dict) -> None:
    """Write the merged file: as NAME.partial, renamed when whole."""
    sizes = [os.path.getsize(s) for s in sources]
    header = {"format": "ipvtrace-merged", "version": VERSION,
              "nodes": [{"name": n, "bytes": b} for n, b in zip(names, sizes)],
              "clock": clock}
    raw = json.dumps(header).encode()
    tmp = path.with_name(path.name + ".partial")
    try:
        with private_open(tmp, buffering=1 << 20) as out:
            out.write(MAGIC + struct.pack("<H", VERSION) + HEAD.pack(len(raw)) + raw)
            for src, size in zip(sources, sizes):
                with open(src, "rb") as f:
                    left = size
                    while left:
                        chunk = f.read(min(left, 1 << 20))
                        if not chunk:
                            raise OSError(f"{src} shrank while it was merged")
                        out.write(chunk)
                        left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(path: Path) -> Merged:
    """Open and check a merged file; RecordingError with a one-line reason."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read ({exc.strerror or exc})") from None
    view = memoryview(data)
    fixed = len(MAGIC) + 2 + HEAD.size
    if len(view) < fixed or bytes(view[:len(MAGIC)]) != MAGIC:
        raise RecordingError(f"{path}: not a merged ipvtrace file")
    (version,) = struct.unpack_from("<H", view, len(MAGIC))
    if version != VERSION:
        raise RecordingError(f"{path}: merged file version {version}; this ipvtrace reads {VERSION}")
    (n,) = HEAD.unpack_from(view, len(MAGIC) + 2)
    if n > MAX_HEADER or fixed + n > len(view):
        raise RecordingError(f"{path}: corrupted: merged header of {n} bytes")
    header = _header(bytes(view[fixed:fixed + n]), path)
    off, parts = fixed + n, []
    for node in header["nodes"]:
        end = off + node["bytes"]
        if end > len(view):
            raise RecordingError(f"{path}: truncated inside node {node['name']}'s recording")
        parts.append(Part(node["name"], recording.parse(view[off:end], f"{path} [{node['name']}]")))
        off = end
    if off != len(view):
        raise RecordingError(f"{path}: corrupted: {len(view) - off} bytes after the last node")
    return Merged(header=header, parts=parts)


def _header(raw: bytes, path: Path) -> dict:
    try:
        h = json.loads(raw)
    except (ValueError, RecursionError):
        raise RecordingError(f"{path}: corrupted merged header (not JSON)") from None
    nodes = h.get("nodes") if isinstance(h, dict) else None
    if (not isinstance(nodes, list) or not 2 <= len(nodes) <= MAX_NODES
            or h.get("format") != "ipvtrace-merged"):
        raise RecordingError(f"{path}: corrupted merged header (nodes)")
    names = set()
    for node in nodes:
        if (not isinstance(node, dict) or not isinstance(node.get("bytes"), int)
                or isinstance(node.get("bytes"), bool) or node["bytes"] < 0):
            raise RecordingError(f"{path}: corrupted merged header (a node entry)")
        try:
            names.add(check_name(node.get("name")))
        except ValueError as exc:
            raise RecordingError(f"{path}: corrupted merged header ({exc})") from None
    if len(names) != len(nodes):
        raise RecordingError(f"{path}: corrupted merged header (a node name twice)")
    if not isinstance(h.get("clock", {}), dict):
        raise RecordingError(f"{path}: corrupted merged header (clock)")
    return h
