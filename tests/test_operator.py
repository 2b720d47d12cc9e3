"""The operator's tools on kept real-kernel recordings: filters, --stats,
--pcapng read back by tshark."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import article_checks

LAB = Path(__file__).parent / "fixtures" / "lab-6.12.ipvt"


def replay(*args):
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(LAB), *args],
                       capture_output=True, text=True, timeout=120)
    return r


@pytest.fixture(scope="module")
def rows():
    return article_checks.replay_json(LAB)


def test_stats_counts_what_replay_shows(rows):
    r = replay("--stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    want = Counter(row["branch"] for row in rows)
    want.update(m["branch"] for row in rows for m in row.get("mcast", []))
    assert stats["branches"] == dict(want)
    assert stats["packets"] == len(rows) and stats["lost_events"] == 0


@pytest.mark.parametrize("args,keep", [
    (["--branch", "tx.l3.*"], lambda r: r["branch"].startswith("tx.l3.")),
    (["--netns", "ipvt-6-node2ns"], lambda r: "ipvt-6-node2ns" in
     {e["netns"] for e in (r["from"], r["to"], *(m["to"] for m in r.get("mcast", []))) if e}),
    (["--dev", "ipvl_10"], lambda r: "ipvl_10" in
     {e["dev"] for e in (r["from"], r["to"], *(m["to"] for m in r.get("mcast", []))) if e}),
    (["--mode", "l3"], lambda r: r["mode"] == "l3"),
    (["--branch", "mcast.out_parent"], lambda r: any(
        m["branch"] == "mcast.out_parent" for m in r.get("mcast", []))),
])
def test_filters(rows, args, keep):
    r = replay("--json", *args)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    want = [row for row in rows if keep(row)]
    assert got == want and got


def test_bad_filter_value():
    r = replay("--mode", "l4")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_pcapng_read_by_tshark(rows, tmp_path):
    assert shutil.which("tshark"), "scripts/setup installs tshark"
    out = tmp_path / "lab.pcapng"
    r = replay("--pcapng", str(out))
    assert r.returncode == 0 and "wrote" in r.stderr, r.stderr
    t = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment",
                        "-e", "ip.src", "-e", "ip.dst"], capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    lines = t.stdout.splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        comment, src, dst = (line.split("\t") + ["", ""])[:3]
        assert f"branch={row['branch']} " in comment and f"delivery={row['delivery']}" in comment
        if row["proto"] in ("icmp", "udp", "tcp"):
            assert (src, dst) == (row["src"], row["dst"])


def test_dashboard_renders_counters_and_recent(rows):
    import io

    from rich.console import Console

    from ipvtrace.output.render import Dashboard

    buf = io.StringIO()
    d = Dashboard(recent=5, console=Console(file=buf, width=200, color_system=None))
    d.attached("ipvtrace on test: 21 probes", lambda: 3)
    for row in rows:
        d(row)
    d.console.print(d)
    text = buf.getvalue()
    assert "21 probes" in text and f"packets {len(rows)}" in text and "lost events 3" in text
    assert f"tx.l2.local {sum(r['branch'] == 'tx.l2.local' for r in rows)}" in text
    assert text.count("\n") < 30   # 5 recent rows, not all of them
    assert rows[-1]["summary"][:30] in text


def test_leftover_probes_of_dead_tracers_are_found(tmp_path):
    """bcc's return probes of a SIGKILLed ipvtrace stay in kprobe_events:
    found (for removal at the next start, and for doctor) when their pid is
    gone; a live tracer's and other tools' probes are left alone."""
    import os

    from ipvtrace.capture import probes

    dead = 4194303   # above pid_max's default: no such process
    (tmp_path / "kprobe_events").write_text(
        f"r128:kprobes/r_ipvlan_queue_xmit_bcc_{dead} ipvlan_queue_xmit\n"
        f"r128:kprobes/r_ipvlan_rcv_frame_isra_0_bcc_{dead} ipvlan_rcv_frame.isra.0\n"
        f"r128:kprobes/r_dev_forward_skb_bcc_{os.getpid()} dev_forward_skb\n"
        f"r:kprobes/r_tcp_sendmsg_bcc_{dead} tcp_sendmsg\n"
        "p:kprobes/myprobe ipvlan_queue_xmit\n")
    left = probes.leftover_probe_events(tmp_path)
    assert left == [(f"kprobes/r_ipvlan_queue_xmit_bcc_{dead}", dead),
                    (f"kprobes/r_ipvlan_rcv_frame_isra_0_bcc_{dead}", dead)]


def test_hits_the_kernel_skipped_are_counted_per_probe(monkeypatch):
    """Hits the kernel skipped a program for (bpf_prog_active held). From 6.7
    the kernel counts them per program (fdinfo recursion_misses), kprobes
    and tracepoints alike, counted from arm(). Before 6.7, for kprobes only:
    the kprobe's hits (kprobe_profile) minus its program's runs; a hit
    between the two readings may already have run, so a reading only
    undercounts, and the most seen is kept (never a count that goes down)."""
    from types import SimpleNamespace

    from ipvtrace.capture import loader, probes

    plan = probes.ProbePlan(kernel="6.12.117+deb12-amd64", tracefs="/nonexistent",
                            attach=[{"name": "xmit", "fn": "on_xmit", "kind": "kprobe"},
                                    {"name": "rx_ret", "fn": "on_rx_ret", "kind": "kretprobe"},
                                    {"name": "kfree", "fn": "on_kfree", "kind": "raw_tracepoint"}],
                            counts_skipped=True)
    t = loader.Tracer(plan)
    t.bpf = SimpleNamespace(funcs={b"on_xmit": SimpleNamespace(fd=3),
                                   b"on_rx_ret": SimpleNamespace(fd=4),
                                   b"on_kfree": SimpleNamespace(fd=5),
                                   b"unrelated": SimpleNamespace(fd=6)})
    misses = {3: 1, 4: 0, 5: 7, 6: 100}
    monkeypatch.setattr(loader, "fdinfo_misses", lambda fd: misses[fd])
    t._base_prog_misses = t._prog_misses()   # what arm() does
    misses.update({3: 4, 5: 57, 6: 200})
    hits = {"xmit": {"hits": 100, "misses": 0}, "rx_ret": {"hits": 40, "misses": 1}}
    # 6.7+: the kernel's own counts since arm(), whatever the hits and runs say
    assert t.skipped(hits, {"xmit": 90, "rx_ret": 40}) == {"xmit": 3, "rx_ret": 0, "kfree": 50}

    plan.counts_skipped = False   # before 6.7: estimated for kprobes, tracepoints unknown
    assert t.skipped(hits, {"xmit": 97, "rx_ret": 40}) == {"xmit": 3}
    # packets passed between the two reads: runs ahead of the hits read first
    hits = {"xmit": {"hits": 150, "misses": 0}, "rx_ret": {"hits": 60, "misses": 1}}
    assert t.skipped(hits, {"xmit": 149, "rx_ret": 61})["xmit"] == 3
    hits["xmit"]["hits"] = 200
    assert t.skipped(hits, {"xmit": 195, "rx_ret": 61}) == {"xmit": 5}
    assert probes.kernel_version("6.1.0-57-rt-amd64") < probes.COUNTS_SKIPPED_SINCE
    assert probes.kernel_version("6.12.117+deb12-amd64") >= probes.COUNTS_SKIPPED_SINCE



def _skip_counting_tracer(monkeypatch, misses: dict, reads: list, fails: bool = False):
    """A 6.12 Tracer with one program (fd 3) whose skipped-hit count is
    misses[3], read through a stand-in for BPF_OBJ_GET_INFO_BY_FD (every
    read appended to *reads*), which fails when *fails*."""
    from types import SimpleNamespace

    from ipvtrace.capture import bpfsys, loader, probes

    class Info:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def run_stats(self) -> tuple[int, int, int]:
            if fails:
                raise OSError(22, "bpf(15) failed")
            reads.append(self.fd)
            return 0, 0, misses[self.fd]

    monkeypatch.setattr(bpfsys, "ProgInfo", Info)
    plan = probes.ProbePlan(kernel="6.12.117+deb12-amd64", tracefs="/nonexistent",
                            attach=[{"name": "xmit", "fn": "on_xmit", "kind": "kprobe"}],
                            counts_skipped=True)
    t = loader.Tracer(plan)
    t.bpf = SimpleNamespace(funcs={b"on_xmit": SimpleNamespace(fd=3)})
    return t


def test_live_ticks_read_the_programs_skip_counts_once_a_second(monkeypatch):
    """Reading every program's skipped hits (then from fdinfo) and
    kprobe_profile five times a second was most of an idle `record`'s CPU
    under emulation: ticks (fresh=False) reuse a reading younger than
    COUNTERS_EVERY_S; the last reading is fresh."""
    from ipvtrace.capture import loader

    reads, misses, clock = [], {3: 0}, [100.0]
    t = _skip_counting_tracer(monkeypatch, misses, reads)
    monkeypatch.setattr(loader, "fdinfo_misses", lambda fd: pytest.fail("fdinfo read"))
    monkeypatch.setattr(loader.time, "monotonic", lambda: clock[0])
    t._base_prog_misses = t._prog_misses()
    reads.clear()
    misses[3] = 2
    assert t.skipped({}, {}, fresh=False) == {"xmit": 2}
    misses[3] = 5
    clock[0] += loader.COUNTERS_EVERY_S / 2
    assert t.skipped({}, {}, fresh=False) == {"xmit": 2}   # the reading of half a second ago
    assert len(reads) == 1
    clock[0] += loader.COUNTERS_EVERY_S / 2
    assert t.skipped({}, {}, fresh=False) == {"xmit": 5}
    misses[3] = 6
    assert t.skipped({}, {}) == {"xmit": 6}                 # fresh: read now
    assert len(reads) == 3


def test_skip_counts_come_from_fdinfo_where_bpf_info_fails(monkeypatch):
    """Where BPF_OBJ_GET_INFO_BY_FD cannot be made (bpf(2)'s number not
    known on this machine), the count is read from the program's fdinfo."""
    from ipvtrace.capture import loader

    t = _skip_counting_tracer(monkeypatch, {3: 0}, [], fails=True)
    from_fdinfo = []
    monkeypatch.setattr(loader, "fdinfo_misses", lambda fd: from_fdinfo.append(fd) or 4)
    assert t._prog_misses() == {"xmit": 4} and from_fdinfo == [3]


def test_live_ticks_read_kprobe_profile_once_a_second(monkeypatch):
    """The same for tracefs kprobe_profile (kprobe misses, and the hits the
    pre-6.7 skip estimate subtracts runs from)."""
    from ipvtrace.capture import loader, probes
    from ipvtrace.model import layout

    plan = probes.ProbePlan(kernel="6.1.0-57-amd64", tracefs="/nonexistent",
                            attach=[{"name": "xmit", "fn": "on_xmit", "kind": "kprobe"}])
    t = loader.Tracer(plan)
    reads, clock = [], [100.0]
    monkeypatch.setattr(t, "kprobe_misses",
                        lambda: reads.append(1) or {"xmit": {"hits": 10, "misses": len(reads)}})
    monkeypatch.setattr(t, "_stats_values", lambda: (0,) * (layout.current().runs_base + 64))
    monkeypatch.setattr(loader.time, "monotonic", lambda: clock[0])
    assert t.kernel_stats(fresh=False)["kprobe_missed.xmit"] == 1
    clock[0] += loader.COUNTERS_EVERY_S / 2
    assert t.kernel_stats(fresh=False)["kprobe_missed.xmit"] == 1
    clock[0] += loader.COUNTERS_EVERY_S / 2
    assert t.kernel_stats(fresh=False)["kprobe_missed.xmit"] == 2
    assert t.kernel_stats()["kprobe_missed.xmit"] == 3   # fresh
    assert len(reads) == 3
