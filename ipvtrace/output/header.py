"""What a recording's JSON frames may hold: header, snapshots, trailer.

Recordings travel between machines, so every JSON frame is input from a
stranger. Each check here raises BadFrame with what is wrong; the reader turns
that into one line and exit 2. Nothing downstream (the decoder, the topology,
the classifier) ever sees a value of the wrong type, a struct format it
cannot build, or a size that would make it allocate more than the file holds.
"""
from __future__ import annotations

import re
import struct
from typing import Any

HDR_MAX_CAP = 4096          # captured bytes per event; the kernel sends at most 128
EVENT_SIZE_CAP = 64 << 10   # one event's fixed part
# the fields the decoder and the classifier read from every event
EVENT_FIELDS = ("ts", "skb", "head", "ctx", "aux", "aux2", "ret", "cpu", "pid", "netns",
                "ifindex", "reason", "len", "probe", "depth", "flags", "hdr_len", "ifname", "hdr")
# the fields the decoder reads from a closed context's record and its hits (format 3)
REC_FIELDS = ("ts", "skb", "head", "ctx", "nhits", "kind", "ret_dt", "ret", "cpu", "pid",
              "netns", "ifindex", "len", "probe", "depth", "flags", "hdr_len", "ifname")
HIT_FIELDS = ("skb", "head", "aux", "aux2", "ret", "dt", "netns", "ifindex", "reason", "len",
              "probe", "flags", "ifname")
_FMT = re.compile(r"<(\d{0,4}[QqIiHhBbs])+")
_CODE = re.compile(r"(\d*)([QqIiHhBbs])")


class BadFrame(ValueError):
    """A JSON frame of the wrong shape; str() says which field and why."""


def _need(cond: bool, what: str) -> None:
    """BadFrame(what) unless *cond*. *what* may hold a key from the file: its
    characters that do not print (a newline, a terminal escape) are written
    as escapes, so the error is one line and prints as it reads."""
    if not cond:
        raise BadFrame("".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                               for c in what))


def _int(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool), f"{what} is not an integer")
    _need((lo is None or v >= lo) and (hi is None or v <= hi), f"{what} out of range ({v})")
    return v


def _str(v: Any, what: str, optional: bool = False) -> str | None:
    if optional and v is None:
        return None
    _need(isinstance(v, str), f"{what} is not a string")
    return v


def _dict(v: Any, what: str) -> dict:
    _need(isinstance(v, dict), f"{what} is not an object")
    return v


def _list(v: Any, what: str) -> list:
    _need(isinstance(v, list), f"{what} is not a list")
    return v


def layout(d: Any) -> dict:
    """The event layout a recording was written with (struct format, fields,
    probe names, flags): checked so that the decoder can be built from it."""
    d = _dict(d, "layout")
    fields = _list(d.get("fields"), "layout.fields")
    for f in fields:
        _str(f, "layout.fields[]")
    fmt = _str(d.get("fmt"), "layout.fmt")
    _need(len(fmt) < 512 and _FMT.fullmatch(fmt) is not None, "layout.fmt is not a struct format")
    codes = _CODE.findall(fmt[1:])
    _need(len(codes) == len(fields), "layout.fmt and layout.fields disagree")
    _need(len(set(fields)) == len(fields), "layout.fields repeats a name")
    missing = [f for f in EVENT_FIELDS if f not in fields]
    _need(not missing, f"layout.fields lacks {', '.join(missing)}")
    try:
        size = struct.calcsize(fmt)
    except struct.error:
        raise BadFrame("layout.fmt is not a struct format") from None
    hdr_max = _int(d.get("hdr_max"), "layout.hdr_max", 0, HDR_MAX_CAP)
    _need(size <= EVENT_SIZE_CAP + hdr_max, f"layout.fmt describes {size}-byte events")
    by_name = dict(zip(fields, codes))
    _need(by_name["hdr"] == (str(hdr_max), "s"), "layout.hdr does not hold hdr_max bytes")
    _need(by_name["ifname"][1] == "s", "layout.ifname is not a byte string")
    for f in EVENT_FIELDS:
        if f not in ("hdr", "ifname"):
            _need(by_name[f][0] == "" and by_name[f][1] != "s", f"layout.{f} is not a number")
    _need(fields[-1] == "hdr", "layout.hdr is not the last field")
    probes = _dict(d.get("probes"), "layout.probes")
    for k, v in probes.items():
        _need(k.isdigit() and int(k) < 1 << 16, "layout.probes has a key that is not a probe id")
        _str(v, "layout.probes[]")
    flags = _dict(d.get("flags"), "layout.flags")
    for k, v in flags.items():
        _int(v, f"layout.flags.{k}", 0, 0xFF)
    _int(d.get("format_version"), "layout.format_version", 0)
    if "rec" in d or "hit" in d:
        rec = _struct(d.get("rec"), "layout.rec", REC_FIELDS)
        _struct(d.get("hit"), "layout.hit", HIT_FIELDS)
        _need(rec["probe"] == _offset(fields, fmt, "probe"),
              "layout.rec.probe is not where an event's probe is")
    return d


def _offset(fields: list, fmt: str, name: str) -> int:
    codes = _CODE.findall(fmt[1:])
    i = fields.index(name)
    return struct.calcsize("<" + "".join(n + c for n, c in codes[:i]))


def _struct(d: Any, what: str, needed: tuple[str, ...]) -> dict[str, int]:
    """A record or hit layout: numbers where numbers are read, `ifname` a
    byte string, a size within the cap. Returns each needed field's offset."""
    d = _dict(d, what)
    fields = _list(d.get("fields"), f"{what}.fields")
    for f in fields:
        _str(f, f"{what}.fields[]")
    fmt = _str(d.get("fmt"), f"{what}.fmt")
    _need(len(fmt) < 512 and _FMT.fullmatch(fmt) is not None, f"{what}.fmt is not a struct format")
    codes = _CODE.findall(fmt[1:])
    _need(len(codes) == len(fields), f"{what}.fmt and {what}.fields disagree")
    _need(len(set(fields)) == len(fields), f"{what}.fields repeats a name")
    missing = [f for f in needed if f not in fields]
    _need(not missing, f"{what}.fields lacks {', '.join(missing)}")
    try:
        size = struct.calcsize(fmt)
    except struct.error:
        raise BadFrame(f"{what}.fmt is not a struct format") from None
    _need(0 < size <= EVENT_SIZE_CAP, f"{what}.fmt describes {size}-byte records")
    by_name = dict(zip(fields, codes))
    for f in needed:
        if f == "ifname":
            _need(by_name[f][1] == "s", f"{what}.ifname is not a byte string")
        else:
            _need(by_name[f][0] == "" and by_name[f][1] != "s", f"{what}.{f} is not a number")
    return {f: _offset(fields, fmt, f) for f in needed}


def snapshot(d: Any, what: str = "snapshot") -> dict:
    """Devices and namespaces, as snapshot.take() writes them."""
    d = _dict(d, what)
    for ns in _list(d.get("namespaces", []), f"{what}.namespaces"):
        ns = _dict(ns, f"{what}.namespaces[]")
        _int(ns.get("inum"), f"{what}.namespaces[].inum", 0)
        _str(ns.get("name"), f"{what}.namespaces[].name", optional=True)
        if ns.get("who") is not None:
            who = _dict(ns["who"], f"{what}.namespaces[].who")
            for k in ("runtime", "container_id", "container", "pod", "pod_id"):
                _str(who.get(k), f"{what}.namespaces[].who.{k}", optional=True)
    for dev in _list(d.get("devices", []), f"{what}.devices"):
        dev = _dict(dev, f"{what}.devices[]")
        _int(dev.get("netns"), f"{what}.devices[].netns", 0)
        _int(dev.get("ifindex"), f"{what}.devices[].ifindex")
        _str(dev.get("name"), f"{what}.devices[].name", optional=True)
        _str(dev.get("kind"), f"{what}.devices[].kind", optional=True)
        _str(dev.get("mac"), f"{what}.devices[].mac", optional=True)
        for k in ("link", "link_netns"):
            if dev.get(k) is not None:
                _int(dev[k], f"{what}.devices[].{k}")
        for a in _list(dev.get("addrs", []), f"{what}.devices[].addrs"):
            _str(a, f"{what}.devices[].addrs[]")
        if dev.get("ipvlan") is not None:
            ipv = _dict(dev["ipvlan"], f"{what}.devices[].ipvlan")
            _str(ipv.get("mode"), f"{what}.devices[].ipvlan.mode", optional=True)
            for f in _list(ipv.get("flags", []), f"{what}.devices[].ipvlan.flags"):
                _str(f, f"{what}.devices[].ipvlan.flags[]")
    return d


def header(h: Any) -> dict:
    """The header frame: everything replay reads from it, checked."""
    h = _dict(h, "header")
    _need(h.get("format") == "ipvtrace-recording", "header is not an ipvtrace recording header")
    _int(h.get("format_version", 0), "format_version", 0)
    _int(h.get("start_ktime"), "start_ktime", 0)
    wall = h.get("start_wall", 0)
    _need(isinstance(wall, (int, float)) and not isinstance(wall, bool), "start_wall is not a number")
    layout(h.get("layout"))
    reasons = _dict(h.get("drop_reasons", {}), "drop_reasons")
    for k, v in reasons.items():
        _need(k.isdigit(), "drop_reasons has a key that is not a number")
        _str(v, "drop_reasons[]")
    rf = h.get("row_filters")
    if rf is not None:
        rf = _dict(rf, "row_filters")
        for k in ("netns", "dev", "branch", "mode", "pod", "container"):
            for v in _list(rf.get(k, []), f"row_filters.{k}"):
                _str(v, f"row_filters.{k}[]")
    for line in _list(h.get("cannot_show", []), "cannot_show"):
        _str(line, "cannot_show[]")
    _str(h.get("kernel", ""), "kernel")
    _str(h.get("ipvtrace_version", ""), "ipvtrace_version")
    snapshot(h.get("snapshot", {}), "header snapshot")
    return h


def trailer(t: Any) -> dict:
    t = _dict(t, "trailer")
    _int(t.get("lost_events", 0), "trailer.lost_events", 0)
    _int(t.get("events", 0), "trailer.events", 0)
    for k, v in _dict(t.get("kernel_stats", {}), "trailer.kernel_stats").items():
        _int(v, f"trailer.kernel_stats.{k}")
    for k, v in _dict(t.get("symbols", {}), "trailer.symbols").items():
        _need(re.fullmatch(r"0x[0-9a-f]{1,16}", k) is not None, "trailer.symbols has a bad address")
        _str(v, "trailer.symbols[]")
    _str(t.get("ended_by", ""), "trailer.ended_by")
    return t
