"""A tcpdump-style filter: parsed once, run in the kernel for live/record
(compiled to a C expression passed to the BPF program as -DIPVT_FILTER_EXPR)
and on rows for replay, so all three select the same packets.

Grammar (a subset of pcap-filter(7)):
    expr      := term (("or" | "||") term)*
    term      := factor (("and" | "&&") factor)*
    factor    := ("not" | "!") factor | "(" expr ")" | primitive
    primitive := "arp" | "ip" | "ip6" | "icmp" | "icmp6" | "tcp" | "udp"
               | ["src" | "dst"] "host" ADDRESS
               | ["src" | "dst"] "port" NUMBER
For ARP, src/dst are the sender/target IPv4 addresses, as in ipvtrace's rows.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

PROTOS = {
    # name: (C test over struct ipvt_pkt, row test)
    "arp": ("(p.etype == 0x0806)", lambda r: r.get("proto") == "arp"),
    # by the L3 header, as the kernel tests the EtherType: IGMP, ESP, ... too
    "ip": ("(p.etype == 0x0800)", lambda r: r.get("proto") == "ipv4"
           or (r.get("proto") != "arp" and "." in (r.get("src") or ""))),
    "ip6": ("(p.etype == 0x86dd)", lambda r: r.get("proto") == "ipv6" or ":" in (r.get("src") or "")),
    "icmp": ("(p.etype == 0x0800 && p.l4 == 1)", lambda r: r.get("proto") == "icmp"),
    "icmp6": ("(p.etype == 0x86dd && p.l4 == 58)", lambda r: r.get("proto") == "icmp6"),
    "tcp": ("(p.l4 == 6)", lambda r: r.get("proto") == "tcp"),
    "udp": ("(p.l4 == 17)", lambda r: r.get("proto") == "udp"),
}
TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!&|]+)")


class FilterError(ValueError):
    def __init__(self, msg: str, pos: int, text: str) -> None:
        super().__init__(f"{msg} at position {pos + 1}")
        self.msg, self.pos, self.text = msg, pos, text

    def show(self) -> str:
        return f"{self.text}\n{' ' * self.pos}^ {self.msg}"


@dataclass
class Node:
    op: str                      # and | or | not | proto | host | port
    args: tuple = ()
    dir: str | None = None       # src | dst | None

    def c(self) -> str:
        if self.op in ("and", "or"):
            j = " && " if self.op == "and" else " || "
            return "(" + j.join(a.c() for a in self.args) + ")"
        if self.op == "not":
            return f"(!{self.args[0].c()})"
        if self.op == "proto":
            return PROTOS[self.args[0]][0]
        if self.op == "port":
            n = self.args[0]
            sides = {"src": f"p.sport == {n}", "dst": f"p.dport == {n}"}
            test = sides[self.dir] if self.dir else f"(p.sport == {n} || p.dport == {n})"
            return f"((p.l4 == 6 || p.l4 == 17) && {test})"
        addr = self.args[0]
        if addr.version == 4:
            v = struct.unpack("<I", addr.packed)[0]     # as the kernel's __be32 reads on x86
            one = {"src": f"p.s4 == {v:#x}U", "dst": f"p.d4 == {v:#x}U"}
            test = one[self.dir] if self.dir else f"(p.s4 == {v:#x}U || p.d4 == {v:#x}U)"
            return f"(p.has4 && {test})"
        words = struct.unpack("<4I", addr.packed)
        eq = {side: " && ".join(f"p.{side}6[{i}] == {w:#x}U" for i, w in enumerate(words))
              for side in ("s", "d")}
        test = (f"({eq['s']})" if self.dir == "src" else f"({eq['d']})" if self.dir == "dst"
                else f"(({eq['s']}) || ({eq['d']}))")
        return f"(p.has6 && {test})"

    def match(self, row: dict) -> bool:
        if self.op == "and":
            return all(a.match(row) for a in self.args)
        if self.op == "or":
            return any(a.match(row) for a in self.args)
        if self.op == "not":
            return not self.args[0].match(row)
        if self.op == "proto":
            return PROTOS[self.args[0]][1](row)
        if self.op == "port":
            if row.get("proto") not in ("tcp", "udp"):
                return False
            ports = {"src": [row.get("sport")], "dst": [row.get("dport")]}.get(
                self.dir, [row.get("sport"), row.get("dport")])
            return self.args[0] in ports
        addrs = {"src": [row.get("src")], "dst": [row.get("dst")]}.get(
            self.dir, [row.get("src"), row.get("dst")])
        return any(a is not None and ipaddress.ip_address(a) == self.args[0] for a in addrs)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            m = TOKEN.match(text, pos)
            if not m or not m.group(1):
                raise FilterError("unexpected character", pos, text)
            self.toks.append((m.group(1), m.start(1)))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0].lower() if self.i < len(self.toks) else None

    def pos(self) -> int:
        return self.toks[self.i][1] if self.i < len(self.toks) else len(self.text)

    def take(self) -> str:
        tok = self.toks[self.i][0]
        self.i += 1
        return tok

    def expr(self) -> Node:
        items = [self.term()]
        while self.peek() in ("or", "||"):
            self.take()
            items.append(self.term())
        return items[0] if len(items) == 1 else Node("or", tuple(items))

    def term(self) -> Node:
        items = [self.factor()]
        while self.peek() in ("and", "&&"):
            self.take()
            items.append(self.factor())
        return items[0] if len(items) == 1 else Node("and", tuple(items))

    def factor(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise FilterError("expression ends too early", self.pos(), self.text)
        if tok in ("not", "!"):
            self.take()
            return Node("not", (self.factor(),))
        if tok == "(":
            self.take()
            node = self.expr()
            if self.peek() != ")":
                raise FilterError("missing ')'", self.pos(), self.text)
            self.take()
            return node
        return self.primitive()

    def primitive(self) -> Node:
        start = self.pos()
        tok = self.take().lower()
        if tok in PROTOS:
            return Node("proto", (tok,))
        direction = None
        if tok in ("src", "dst"):
            direction = tok
            if self.peek() is None:
                raise FilterError(f"'{tok}' needs 'host' or 'port'", self.pos(), self.text)
            start = self.pos()
            tok = self.take().lower()
        if tok in ("host", "port"):
            if self.peek() is None:
                raise FilterError(f"'{tok}' needs a value", self.pos(), self.text)
            vpos = self.pos()
            value = self.take()
            if tok == "host":
                try:
                    return Node("host", (ipaddress.ip_address(value),), direction)
                except ValueError:
                    raise FilterError(f"not an IP address: {value!r}", vpos, self.text) from None
            if not value.isdigit() or not 0 <= int(value) <= 65535:
                raise FilterError(f"not a port number: {value!r}", vpos, self.text)
            return Node("port", (int(value),), direction)
        raise FilterError(f"unknown word {tok!r} (known: {', '.join(PROTOS)}, host, port, "
                          "src, dst, and, or, not)", start, self.text)


def parse(text: str) -> Node:
    p = _Parser(text)
    if not p.toks:
        raise FilterError("empty filter", 0, text)
    node = p.expr()
    if p.i != len(p.toks):
        raise FilterError(f"unexpected {p.toks[p.i][0]!r}", p.pos(), text)
    return node
