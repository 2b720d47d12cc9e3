"""The BTF reader: offsets through anonymous unions and typedefs, sizes
checked, and a damaged blob gives BTFError (never another exception, never a
guess). Blobs are built here type by type, as the kernel lays them out
(Documentation/bpf/btf.rst); the real kernels' BTF is checked against their
headers by scripts/compile-check and in the guest suite."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvtrace.capture import btf


class Blob:
    """A BTF blob under construction: add types, get ids."""

    def __init__(self) -> None:
        self.strs = b"\0"
        self.types = b""
        self.n = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kflag: int = 0) -> int:
        self.types += struct.pack("<III", self.s(name), kind << 24 | vlen | kflag << 31,
                                  size_or_type) + extra
        self.n += 1
        return self.n

    def int_(self, name: str, size: int) -> int:
        return self.add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def ptr(self, to: int) -> int:
        return self.add("", btf.PTR, 0, to)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.add("", btf.ARRAY, 0, 0, struct.pack("<III", elem, index, n))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]],
                kind: int = btf.STRUCT) -> int:
        extra = b"".join(struct.pack("<III", self.s(m), t, off * 8) for m, t, off in members)
        return self.add(name, kind, len(members), size, extra)

    def bytes(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strs))
        return hdr + self.types + self.strs


def kernel_like() -> bytes:
    """sk_buff with its fields inside anonymous unions and structs (as the
    kernel's struct_group()s), typedefs, a forward declaration named like the
    real struct, and the other three structs ipvtrace reads."""
    b = Blob()
    u8, u16, u32, u64 = b.int_("u8", 1), b.int_("u16", 2), b.int_("u32", 4), b.int_("u64", 8)
    le16 = b.add("__u16", btf.TYPEDEF, 0, u16)
    b.add("sk_buff", btf.FWD, 0, 0)                      # a forward declaration first
    nd = b.struct_("net_device", 0, [])                  # (completed below by id order)
    pu8 = b.ptr(u8)
    hdrs = b.struct_("", 8, [("transport_header", le16, 0), ("network_header", le16, 2),
                             ("mac_header", le16, 4)])
    grp = b.struct_("", 8, [("", hdrs, 0), ("headers", hdrs, 0)], kind=btf.UNION)
    devp = b.ptr(nd)
    first = b.struct_("", 24, [("next", b.ptr(u8), 0), ("prev", b.ptr(u8), 8), ("dev", devp, 16)])
    un = b.struct_("", 24, [("", first, 0), ("rbnode", u64, 0)], kind=btf.UNION)
    b.struct_("sk_buff", 232, [("", un, 0), ("_skb_refdst", u64, 88), ("len", u32, 112),
                               ("data_len", u32, 116), ("", grp, 178), ("head", pu8, 192),
                               ("data", pu8, 200)])
    ns = b.struct_("ns_common", 32, [("count", u64, 0), ("inum", u32, 24)])
    net = b.struct_("net", 256, [("ns", ns, 152)])
    pnet = b.add("possible_net_t", btf.TYPEDEF, 0, b.struct_("", 8, [("net", b.ptr(net), 0)]))
    name = b.array(b.add("char", btf.INT, 0, 1, struct.pack("<I", 8)), u32, 16)
    b.struct_("net_device", 1024, [("ifindex", b.add("", btf.CONST, 0, u32), 224),
                                   ("nd_net", pnet, 264), ("name", name, 280)])
    b.struct_("dst_entry", 64, [("dev", devp, 0)])
    return b.bytes()


def test_offsets_through_anonymous_members_and_typedefs():
    assert btf.offsets(kernel_like()) == {
        "IPVT_OFF_SKB_HEAD": 192, "IPVT_OFF_SKB_DATA": 200, "IPVT_OFF_SKB_MAC_HEADER": 182,
        "IPVT_OFF_SKB_LEN": 112, "IPVT_OFF_SKB_DATA_LEN": 116, "IPVT_OFF_SKB_DEV": 16,
        "IPVT_OFF_SKB_REFDST": 88, "IPVT_OFF_DEV_IFINDEX": 224, "IPVT_OFF_DEV_NAME": 280,
        "IPVT_OFF_DEV_NET": 264, "IPVT_OFF_NET_INUM": 176, "IPVT_OFF_DST_DEV": 0}


def test_a_member_of_another_size_is_refused():
    b = Blob()
    u16 = b.int_("u16", 2)
    b.struct_("sk_buff", 8, [("len", u16, 0)])
    with pytest.raises(btf.BTFError, match="sk_buff.len is 2 bytes here, ipvtrace reads 4"):
        btf.BTF(b.bytes()).offset("sk_buff", "len", 4)


def test_missing_struct_and_member():
    blob = btf.BTF(kernel_like())
    with pytest.raises(btf.BTFError, match="struct nope is not"):
        blob.offset("nope", "x", 4)
    with pytest.raises(btf.BTFError, match="no member nothere"):
        blob.offset("sk_buff", "nothere", 4)


def test_read_offsets_without_btf(tmp_path):
    with pytest.raises(btf.BTFError, match="CONFIG_DEBUG_INFO_BTF"):
        btf.read_offsets(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(btf.BTFError):
        btf.read_offsets(empty)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_damaged_blob_gives_btferror_only(data):
    blob = bytearray(kernel_like())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        btf.offsets(bytes(blob[:cut] if data.draw(st.booleans()) else blob))
    except btf.BTFError:
        pass
