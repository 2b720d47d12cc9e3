"""FrameNames (model/packet.py): a flow's names worked out once give, for
every frame, what parse() gives it: the row's frame fields and summary."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvtrace.model.packet import FrameNames, info_key, parse

import synth

MAC2 = b"\x02\x00\x00\x00\x00\x02"


def ipv6(nxt: int, l4: bytes, dmac: bytes = b"\x33\x33\x00\x00\x00\x01") -> bytes:
    return (dmac + MAC2 + b"\x86\xdd" + b"\x60\0\0\0" + struct.pack("!H", len(l4))
            + bytes([nxt, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + l4)


def udp4(sport: int, dport: int, payload: bytes = b"x" * 20) -> bytes:
    ip = (b"\x45\0" + struct.pack("!H", 28 + len(payload)) + b"\x12\x34\0\0\x40\x11\0\0"
          + bytes([10, 0, 0, 1, 10, 0, 0, 2]))
    return synth.MAC + MAC2 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8, 0) + payload


# flows of every kind FrameNames keys, and some it leaves to parse()
FLOWS = [
    synth.ipv4_icmp("10.0.0.1", "10.0.0.2", seq=7),                          # ping
    synth.ipv4_icmp("10.0.0.1", "10.0.0.2", dmac=synth.BCAST),
    udp4(41726, 5201),
    ipv6(58, b"\x80\x00\x12\x34\x00\x09\x00\x05" + b"p" * 16),                # ping6
    ipv6(58, b"\x87\x00\x00\x00\x00\x00\x00\x00" + bytes(15) + b"\x09"),       # neighbour solicit
    ipv6(17, struct.pack("!HHHH", 546, 547, 8, 0)),
    ipv6(0, b"\x3a\x00\x05\x02\x00\x00\x01\x00" + b"\x8f" + bytes(27)),       # MLD, hop-by-hop
    b"\xff" * 6 + MAC2 + b"\x08\x06" + bytes(28),                              # ARP
    synth.MAC + MAC2 + b"\x81\x00\x00\x01\x08\x00" + udp4(1, 2)[14:],         # VLAN
]


@settings(max_examples=300, deadline=None, database=None)
@given(flow=st.sampled_from(FLOWS), has_mac=st.booleans(),
       edits=st.lists(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
                      min_size=1, max_size=12),
       cut=st.integers(0, 130))
def test_names_are_what_parse_gives(flow, has_mac, edits, cut):
    """Frames of one flow with any bytes changed (IP IDs, checksums, seqs,
    payloads, and the bytes parse() does read), cut anywhere, one after
    another through one FrameNames: each gets what parse() gives it."""
    names = FrameNames()
    for frame_edits in [[]] + edits:
        frame = bytearray(flow)
        for at, value in frame_edits:
            if at < len(frame):
                frame[at] = value
        frame = bytes(frame[:cut]) if cut < len(frame) and frame_edits else bytes(frame)
        info = parse(frame, has_mac)
        assert names.of(frame, has_mac) == (info_key(info), info.summary())


def test_every_single_byte_change_after_its_flow_is_known():
    """Each flow, then that flow with any one byte changed (to 0x00 or
    0xff, or its other bits): a change in a byte parse() reads is a new
    flow, any other keeps the names and gets its own seq."""
    for flow in FLOWS:
        for has_mac in (True, False):
            names = FrameNames()
            names.of(flow, has_mac)
            for at in range(len(flow)):
                for value in {0, 0xFF, flow[at] ^ 0x5A}:
                    frame = flow[:at] + bytes([value]) + flow[at + 1:]
                    info = parse(frame, has_mac)
                    assert names.of(frame, has_mac) == (info_key(info), info.summary()), (flow, at)


def test_a_ping_flood_is_parsed_once_and_each_row_gets_its_seq():
    """The memo at work: a thousand echo requests, one parse; the summary
    still names each one's sequence number."""
    names = FrameNames()
    calls = 0
    import ipvtrace.model.packet as packet
    real = packet.parse

    def counting(*a):
        nonlocal calls
        calls += 1
        return real(*a)

    packet.parse = counting
    try:
        got = [names.of(synth.ipv4_icmp("10.0.0.1", "10.0.0.2", seq=s), True)[1]
               for s in range(1, 1001)]
    finally:
        packet.parse = real
    assert calls == 1
    assert got[0].endswith("echo-request seq 1") and got[-1].endswith("echo-request seq 1000")
