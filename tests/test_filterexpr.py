"""The tcpdump-style filter: parse errors with their position, the same
selection in Python (replay) as the C expression the kernel runs (checked by
compiling it in scripts/compile-check and by the in-guest live test)."""
import subprocess
import sys
from pathlib import Path

import pytest

import article_checks
from ipvtrace.model.filterexpr import FilterError, parse

LAB = Path(__file__).parent / "fixtures" / "lab-6.12.ipvt"


@pytest.mark.parametrize("text,pos,words", [
    ("", 0, "empty filter"),
    ("icmpp", 0, "unknown word 'icmpp'"),
    ("icmp and", 8, "ends too early"),
    ("host 300.1.1.1", 5, "not an IP address"),
    ("port 70000", 5, "not a port number"),
    ("(icmp or arp", 12, "missing ')'"),
    ("icmp arp", 5, "unexpected 'arp'"),
    ("src", 3, "needs 'host' or 'port'"),
    ("icmp & arp", 5, "unexpected character"),
])
def test_errors_name_the_position(text, pos, words):
    with pytest.raises(FilterError) as e:
        parse(text)
    assert e.value.pos == pos and words in str(e.value)


def test_cli_refuses_before_attaching():
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "record", "-o", "/nonexistent/x",
                        "icmp", "and", "hots", "1.2.3.4"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith("ipvtrace: error: bad filter: unknown word 'hots'")
    assert "at position 10" in r.stderr and "           ^" in r.stderr


@pytest.fixture(scope="module")
def rows():
    return article_checks.replay_json(LAB)


@pytest.mark.parametrize("text,keep", [
    ("icmp", lambda r: r["proto"] == "icmp"),
    ("arp", lambda r: r["proto"] == "arp"),
    ("icmp6 or ip6", lambda r: ":" in (r["src"] or "")),
    ("host 172.18.22.115", lambda r: "172.18.22.115" in (r["src"], r["dst"])),
    ("src host 192.168.100.101 and not arp",
     lambda r: r["src"] == "192.168.100.101" and r["proto"] != "arp"),
    ("arp and dst host 192.168.100.1", lambda r: r["proto"] == "arp" and r["dst"] == "192.168.100.1"),
    ("udp or tcp", lambda r: r["proto"] in ("udp", "tcp")),
])
def test_replay_selects_the_same_as_python(rows, text, keep):
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", "--json", str(LAB), *text.split()],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    got = [json.loads(l) for l in r.stdout.splitlines()]
    assert got == [row for row in rows if keep(row)]


def test_c_expression_shape():
    c = parse("icmp and host 10.0.0.1").c()
    assert "p.etype == 0x0800 && p.l4 == 1" in c and "0x100000a" in c   # 10.0.0.1 as __be32 on x86


def test_filter_words_after_options(rows):
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(LAB), "--json", "icmp",
                        "and", "host", "172.18.22.115"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(
        [x for x in rows if x["proto"] == "icmp" and "172.18.22.115" in (x["src"], x["dst"])]) > 0
    bad = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(LAB), "--bogus"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
