"""Command line: live, record, replay, branches."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipvtrace import __version__, heap
from ipvtrace.model import catalogue, filters

EXAMPLES = {
    "live": """examples:
  sudo ipvtrace live                 # one line per packet, as ipvlan handles it
  sudo ipvtrace live --why           # ... with the evidence behind each branch
  sudo ipvtrace live --json | jq .   # one JSON object per packet
  sudo ipvtrace live --duration 10   # stop after 10 seconds
  sudo ipvtrace live 'icmp and host 192.168.100.101'   # filter in the kernel
  sudo ipvtrace live --netns pod-a --branch '*drop*'   # filter on the result
  sudo ipvtrace live --pod 'default/web-*'           # a Kubernetes pod's packets
  sudo IPVTRACE_TRAMPOLINES=0 ipvtrace live          # kprobes, not fentry/fexit

environment (live, record, stats):
  IPVTRACE_TRAMPOLINES=0   kprobes and tracepoints even where the kernel has
                           fentry/fexit (x86-64, 5.12+, BTF, not PREEMPT_RT: used
                           by default there, docs/commands.md#overhead); 'ipvtrace
                           doctor' lists what each probe is attached by
""",
    "record": """examples:
  sudo ipvtrace record -o pods.ipvt                  # until Ctrl-C
  sudo ipvtrace record -o pods.ipvt --duration 30
  sudo ipvtrace record -o dns.ipvt 'udp and port 53'     # only these, filtered in the kernel
  sudo ipvtrace record -o t.ipvt --ready-file /tmp/ready &   # scripts: wait for
  while [ ! -e /tmp/ready ]; do sleep 0.2; done               # the file, then
  ping ...; kill -INT %1; wait                                # send traffic
""",
    "replay": """examples:
  ipvtrace replay pods.ipvt               # no root, no bcc: any machine
  ipvtrace replay pods.ipvt --why         # with the evidence for each branch
  ipvtrace replay pods.ipvt --json | jq 'select(.branch=="tx.l2.to_parent")'
  ipvtrace replay pods.ipvt --branch 'tx.l3.*' --netns pod-a
  ipvtrace replay pods.ipvt --container web   # podman/docker container named web
  ipvtrace replay pods.ipvt --stats           # packets per branch, drops, lost events
  ipvtrace replay pods.ipvt --pcapng pods.pcapng && tshark -r pods.pcapng -T fields -e frame.comment
  ipvtrace replay both.ipvt                   # a merged file (ipvtrace merge): hop by hop
""",
    "merge": """examples:
  ipvtrace merge node-a.ipvt node-b.ipvt -o both.ipvt     # names from the recordings
  ipvtrace merge a.ipvt b.ipvt --name node-a --name node-b -o both.ipvt
  ipvtrace replay both.ipvt                 # each packet hop by hop, with its node
  ipvtrace replay both.ipvt --json | jq 'select(.crossing.arrived==false)'   # lost between

Record on each node at the same time (sudo ipvtrace record -o NODE.ipvt), then
merge anywhere. A packet that left one node by its ipvlan parent
({leaves}) is joined with its arrival
at another node by the bytes of its headers that no hop rewrites (addresses,
IP id, ports, TCP sequence, ICMP id and sequence), never by time alone; the
nodes' clocks are aligned from the packets seen both ways. A packet to an
address of another recorded node that never arrived there is shown as lost,
unless that node's recording lost evidence then (its ring was full or its
kernel skipped probe hits): such a packet is shown as not known (`-> B?`,
`"arrived": null`), never blamed on the wire.
""",
    "stats": """examples:
  sudo ipvtrace stats                       # packets per branch, counted in the kernel
  sudo ipvtrace stats --json --interval 10  # one JSON object every 10 s
  sudo ipvtrace stats --prometheus /var/lib/node_exporter/textfile/ipvtrace.prom
  sudo ipvtrace stats --listen 9437         # http://127.0.0.1:9437/metrics (loopback only)
  sudo ipvtrace stats --listen 0.0.0.0:9437 # every interface: the metrics name namespaces

No event leaves the kernel: the BPF program counts one signature per packet
(which helpers ran, on which devices, what they returned) and ipvtrace names
each distinct signature's branch with the same rules as live and replay.
Cheap enough to leave on; for addresses and the evidence per packet use live.
""",
    "lab": """examples:
  sudo ipvtrace lab --list                  # the scenarios
  sudo ipvtrace lab                         # all of them, traced, with the evidence
  sudo ipvtrace lab article-l3 -o l3.ipvt   # one, keeping the recording

The lab creates its own network namespaces (ipvt-*), a veth pair standing for
the article's ens10 and the outside world, and removes them afterwards.
""",
    "doctor": """examples:
  sudo ipvtrace doctor        # one line per prerequisite, with the fix
""",
    "branches": """examples:
  ipvtrace branches           # the catalogue of ipvlan branches
  ipvtrace branches --json
""",
}


def _fail(msg: str, code: int = 1) -> int:
    print(f"ipvtrace: error: {msg}", file=sys.stderr)
    return code


def _filter(args):
    """Parse FILTER words (as tcpdump joins them); None when absent."""
    from ipvtrace.model.filterexpr import FilterError, parse

    text = " ".join(getattr(args, "expression", None) or [])
    if not text.strip():
        return None
    try:
        return parse(text)
    except FilterError as exc:
        print(f"ipvtrace: error: bad filter: {exc}\n  {exc.show().replace(chr(10), chr(10) + '  ')}",
              file=sys.stderr)
        raise SystemExit(2) from None


def _both(*preds):
    preds = [p for p in preds if p]
    if not preds:
        return None
    return lambda row: all(p(row) for p in preds)


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _ring_pages(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {s!r}") from None
    if v < 1 or v > 1 << 18 or v & (v - 1):
        raise argparse.ArgumentTypeError("a power of two between 1 and 262144 (pages of 4 KiB)")
    return v


def _ring_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ring-pages", type=_ring_pages, default=1024, metavar="N",
                   help="BPF ring buffer size in 4 KiB pages (power of two, default 1024 = "
                        "4 MiB); what does not fit is counted as lost, its packets incomplete")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipvtrace",
        description="Show, packet by packet, which branch the Linux ipvlan driver took.",
        epilog="Run 'ipvtrace COMMAND --help' for examples. Branch ids: 'ipvtrace branches'.",
    )
    p.add_argument("--version", action="version", version=f"ipvtrace {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    live = sub.add_parser("live", help="trace now, print packets as they happen (root)",
                          epilog=EXAMPLES["live"], formatter_class=fmt)
    live.add_argument("expression", nargs="*", metavar="FILTER",
                      help="tcpdump-style filter run in the kernel, e.g. 'icmp and host 10.0.0.2'")
    live.add_argument("--json", action="store_true", help="one JSON object per packet")
    live.add_argument("--why", action="store_true", help="print the evidence under each packet")
    live.add_argument("--lines", action="store_true",
                      help="one line per packet instead of the dashboard (the default off a terminal)")
    live.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    live.add_argument("-o", "--output", type=Path, metavar="FILE", help="also record to FILE")
    live.add_argument("--ready-file", type=Path, metavar="PATH",
                      help="create PATH once the probes are attached")
    _ring_option(live)
    filters.add_arguments(live)

    rec = sub.add_parser("record", help="trace to a file for replay anywhere (root)",
                         epilog=EXAMPLES["record"], formatter_class=fmt)
    rec.add_argument("expression", nargs="*", metavar="FILTER",
                     help="tcpdump-style filter run in the kernel: other packets are not recorded")
    rec.add_argument("-o", "--output", type=Path, metavar="FILE", required=True)
    rec.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    rec.add_argument("--ready-file", type=Path, metavar="PATH",
                     help="create PATH once the probes are attached")
    _ring_option(rec)
    filters.add_arguments(rec)

    rep = sub.add_parser("replay", help="read a recording (no root, no bcc)",
                         epilog=EXAMPLES["replay"], formatter_class=fmt)
    rep.add_argument("file", type=Path, metavar="FILE")
    rep.add_argument("expression", nargs="*", metavar="FILTER",
                     help="tcpdump-style filter over the recorded packets")
    rep.add_argument("--json", action="store_true", help="one JSON object per packet")
    rep.add_argument("--why", action="store_true", help="print the evidence under each packet")
    rep.add_argument("--stats", action="store_true",
                     help="packets per branch, drops by reason, lost events (no rows)")
    rep.add_argument("--pcapng", type=Path, metavar="OUT",
                     help="write the packets (headers as captured) to OUT, branch as comment")
    rep.add_argument("--node", action="append", metavar="NAME",
                     help="a merged file (ipvtrace merge): only rows of this node")
    filters.add_arguments(rep)

    mg = sub.add_parser("merge", help="join recordings of several nodes: one packet across them",
                        epilog=EXAMPLES["merge"].format(leaves=", ".join(
                            b.id for b in catalogue.load().branches.values() if b.leaves_node)),
                        formatter_class=fmt)
    mg.add_argument("files", type=Path, nargs="+", metavar="FILE", help="a recording per node")
    mg.add_argument("-o", "--output", type=Path, metavar="FILE", required=True)
    mg.add_argument("--name", action="append", metavar="NODE",
                    help="the node of each FILE, in order (default: the recording's host name, "
                         "else the file name)")

    st = sub.add_parser("stats", help="packets per branch, counted in the kernel: cheap enough to leave on (root)",
                        epilog=EXAMPLES["stats"], formatter_class=fmt)
    st.add_argument("--interval", type=_positive_float, default=1.0, metavar="S",
                    help="read the counters every S seconds (default 1)")
    st.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    st.add_argument("--json", action="store_true", help="one JSON object per reading")
    st.add_argument("--prometheus", type=Path, metavar="FILE",
                    help="rewrite FILE each reading in the Prometheus text format "
                         "(node_exporter textfile collector)")
    st.add_argument("--listen", metavar="[ADDR:]PORT",
                    help="serve the Prometheus metrics over HTTP at /metrics; a bare PORT "
                         "binds 127.0.0.1 (the metrics name namespaces and devices)")
    st.add_argument("--ready-file", type=Path, metavar="PATH",
                    help="create PATH once the probes are attached")

    lab = sub.add_parser("lab", help="build the article's topologies in namespaces and trace them (root)",
                         epilog=EXAMPLES["lab"], formatter_class=fmt)
    lab.add_argument("names", nargs="*", metavar="NAME", help="scenarios to run (default: all)")
    lab.add_argument("--list", action="store_true", help="list the scenarios and exit")
    lab.add_argument("-o", "--output", type=Path, metavar="FILE",
                     help="keep the recording here (default: a temporary file)")
    lab.add_argument("--json", action="store_true", help="one JSON object per packet")

    br = sub.add_parser("branches", help="the ipvlan branch catalogue",
                        epilog=EXAMPLES["branches"], formatter_class=fmt)
    br.add_argument("--json", action="store_true")
    br.add_argument("--markdown", action="store_true", help="as docs/branches.md has it")

    doc = sub.add_parser("doctor", help="check what tracing needs here, and what this kernel shows",
                         epilog=EXAMPLES["doctor"], formatter_class=fmt)
    del doc
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # FILTER words may come after options (`replay FILE --json icmp`), as tcpdump allows
    if extra:
        if hasattr(args, "expression") and not any(w.startswith("-") for w in extra):
            args.expression = list(args.expression or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    heap.keep_batches()
    try:
        if args.cmd == "branches":
            return cmd_branches(args)
        if args.cmd == "replay":
            return cmd_replay(args)
        if args.cmd == "merge":
            return cmd_merge(args)
        if args.cmd == "lab":
            return cmd_lab(args)
        if args.cmd == "stats":
            return cmd_stats(args)
        if args.cmd == "doctor":
            from ipvtrace.doctor import report

            return report()
        return cmd_trace(args)
    except KeyboardInterrupt:
        print("ipvtrace: interrupted; nothing it set up was left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ipvtrace replay FILE --json | head`: stop quietly; point stdout at
        # /dev/null so the interpreter's last flush does not fail again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _sink(args):
    from ipvtrace.output.jsonlines import JsonSink

    if args.json:
        return JsonSink(flush=args.cmd != "replay")
    from ipvtrace.output.render import LineSink

    return LineSink(why=args.why)


def cmd_merge(args) -> int:
    import json

    from ipvtrace.merge import run_merge
    from ipvtrace.output.recording import RecordingError

    if not args.output.absolute().parent.is_dir():
        return _fail(f"cannot write {args.output}: {args.output.absolute().parent} is not a directory")
    try:
        s = run_merge(args.files, args.output, args.name,
                      on_warning=lambda w: print(f"ipvtrace: warning: {w}", file=sys.stderr))
    except RecordingError as exc:
        return _fail(str(exc), 2)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    print(json.dumps(s, indent=2))
    print(f"ipvtrace: wrote {args.output}", file=sys.stderr)
    return 0


def _replay_merged(args, row_filter) -> int:
    import json

    from ipvtrace.merge import replay_merged
    from ipvtrace.output.recording import RecordingError

    if args.pcapng is not None:
        return _fail("--pcapng takes one node's recording, not a merged file", 2)
    sink = None if args.stats else _sink(args)
    try:
        s = replay_merged(args.file, sink, row_filter=row_filter,
                          on_warning=lambda w: print(f"ipvtrace: warning: {w}", file=sys.stderr))
    except RecordingError as exc:
        return _fail(str(exc), 2)
    except BrokenPipeError:
        raise
    except OSError as exc:
        return _fail(f"{exc.strerror}: {exc.filename}")
    if args.stats:
        print(json.dumps(s, indent=2 if not args.json else None))
    lost = s["trailer"]["lost_events"]
    if lost:
        print(f"ipvtrace: {lost} events were lost while recording: packets around them are "
              "marked incomplete", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    from ipvtrace.output import merged
    from ipvtrace.output.recording import RecordingError
    from ipvtrace.replay import run_replay

    rf = filters.RowFilter.from_args(args)
    expr = _filter(args)
    row_filter = _both(rf.matches if rf else None, expr.match if expr else None)
    if merged.is_merged(args.file):
        nodes = set(args.node or ())
        return _replay_merged(args, _both(row_filter, (lambda r: r["node"] in nodes) if nodes else None))
    if args.node:
        return _fail("--node takes a merged file (ipvtrace merge); this is one node's recording", 2)
    quiet = args.stats or args.pcapng is not None
    sink = None if quiet else _sink(args)
    writer = out = None
    wall = {"ns": 0}   # ktime -> wall clock, from the header, for pcapng timestamps

    def on_header(h: dict) -> None:
        wall["ns"] = int(float(h.get("start_wall", 0)) * 1e9) - int(h.get("start_ktime", 0))

    def to_pcap(row, pkt):
        e = pkt.entry
        if e is None or not e.hdr:
            return
        no_mac = bool(e.flags & pkt_flags["no_mac"])
        # skb->len counts the Ethernet header on TX; on RX skb->data is past it
        mac = 14 if e.probe == "rx" and not no_mac else 0
        writer.packet(wall["ns"] + e.ts, e.hdr, e.len + mac,
                      comment(row), l3_only=no_mac)

    try:
        if args.pcapng is not None:
            from ipvtrace.model.layout import current
            from ipvtrace.output.files import private_open
            from ipvtrace.output.pcapng import PcapngWriter, comment

            pkt_flags = current().flags
            out = private_open(args.pcapng)
            writer = PcapngWriter(out, f"ipvtrace {__version__}")
        summary = run_replay(args.file, sink, row_filter=row_filter,
                             packet_sink=to_pcap if writer else None, on_header=on_header,
                             on_warning=lambda w: print(f"ipvtrace: warning: {w}", file=sys.stderr))
    except RecordingError as exc:
        if out is not None:
            out.close()
            args.pcapng.unlink(missing_ok=True)
        return _fail(str(exc), 2)
    except BrokenPipeError:
        raise   # the reader went away (| head): not an error, see main()
    except OSError as exc:
        return _fail(f"{exc.strerror}: {exc.filename}")
    if out is not None:
        out.close()
        print(f"ipvtrace: wrote {writer.count} packets to {args.pcapng}", file=sys.stderr)
    if args.stats and args.json:
        from ipvtrace.output.jsonlines import stats_line

        print(stats_line(summary))
    elif args.stats:
        from rich.console import Console

        from ipvtrace.output.render import print_stats

        print_stats(summary, Console(highlight=False))
    lost = summary["trailer"].get("lost_events", 0)
    if lost:
        print(f"ipvtrace: {lost} events were lost while recording: packets around them are "
              "marked incomplete", file=sys.stderr)
    return 0


def _tracing(run, writes: Path | None = None):
    """Run a command that attaches probes: (its result, None), or (None, exit
    code) after a one-line error for a missing prerequisite, an output file
    that cannot be written (both checked before anything is attached) or an
    OS error."""
    from ipvtrace.capture.loader import LoadError, require_root
    from ipvtrace.capture.probes import PlanError

    try:
        require_root()
        if writes is not None and not writes.absolute().parent.is_dir():
            return None, _fail(f"cannot write {writes}: {writes.absolute().parent} is not a directory")
        return run(), None
    except (PlanError, LoadError) as exc:
        return None, _fail(str(exc))
    except BrokenPipeError:
        raise   # the reader went away (| head): not an error, see main()
    except OSError as exc:
        return None, _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


def cmd_trace(args) -> int:
    import contextlib

    from ipvtrace.live import LiveOptions, run_live

    expr = _filter(args)   # a bad filter is refused before anything is attached
    rf = filters.RowFilter.from_args(args)
    sink = None
    view = contextlib.nullcontext()
    if args.cmd == "live":
        if not (args.json or args.lines or args.why) and sys.stdout.isatty():
            from ipvtrace.output.render import Dashboard

            sink = view = Dashboard()
        else:
            sink = _sink(args)
    opts = LiveOptions(output=args.output, duration=args.duration,
                       ready_file=getattr(args, "ready_file", None), sink=sink,
                       row_filter=rf.matches if rf else None,
                       on_attached=getattr(sink, "attached", None),
                       filter_c=expr.c() if expr else None,
                       filter_text=" ".join(args.expression) if expr else None,
                       row_filters=rf.to_json() if rf else None,
                       ringbuf_pages=args.ring_pages)

    def run():
        with view:
            return run_live(opts)

    summary, code = _tracing(run, writes=args.output)
    if summary is None:
        return code
    lost = summary.get("lost_events", 0)
    ks = summary.get("kernel_stats", {})
    missed = sum(v for k, v in ks.items() if k.startswith("kprobe_missed."))
    skipped = sum(v for k, v in ks.items() if k.startswith("skipped."))
    tail = f", {lost} records or probe hits LOST" if lost else ", nothing lost"
    if missed or skipped:
        parts = [f"{missed} kprobe misses"] * bool(missed) + [
            f"{skipped} probe hits the kernel skipped (another BPF program or a map "
            "syscall held the CPU, or on PREEMPT_RT another task's preempted run of the "
            "same program)"] * bool(skipped)
        tail += f" ({' and '.join(parts)} among them)"
    if args.cmd == "record":
        print(f"ipvtrace: wrote {summary.get('events', 0)} records to {summary.get('output')}{tail}",
              file=sys.stderr)
    else:
        from rich.console import Console

        from ipvtrace.output.render import print_stats

        print_stats(summary, Console(stderr=True, highlight=False))
    return 0


def cmd_stats(args) -> int:
    import contextlib

    from rich.console import Console

    from ipvtrace.output.render import StatsView, stats_table
    from ipvtrace.stats_session import StatsOptions, run_stats

    exporting = args.prometheus is not None or args.listen is not None
    if exporting:   # prometheus_client only when asked for (~0.1 s of start-up natively)
        from ipvtrace.output.prometheus import PrometheusExport, parse_listen
    listen = None
    if args.listen is not None:
        try:
            listen = parse_listen(args.listen)
        except ValueError as exc:
            return _fail(str(exc), 2)
    sinks: list = []
    view = contextlib.nullcontext()
    if args.json:
        sinks.append(lambda r: print(json.dumps(r), flush=True))
    elif sys.stdout.isatty():
        view = StatsView()
        sinks.append(view)
    def run():
        if exporting:
            sinks.append(PrometheusExport(args.prometheus, listen))
        with view:
            report = run_stats(StatsOptions(interval=args.interval, duration=args.duration,
                                            ready_file=args.ready_file, sinks=sinks))
            for sink in sinks:   # the last reading, taken just before detaching
                sink(report)
        return report

    report, code = _tracing(run, writes=args.prometheus)
    if report is None:
        return code
    if not args.json and not isinstance(view, StatsView):
        Console(highlight=False).print(stats_table(report))   # off a terminal: once, at the end
    return 0


def cmd_lab(args) -> int:
    from ipvtrace.lab.netlab import LabError, require_root
    from ipvtrace.lab.scenarios import LAB, SCENARIOS

    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<18} {s.title}")
        return 0
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        return _fail(f"no scenario {', '.join(unknown)}; 'ipvtrace lab --list' names them", 2)
    from ipvtrace import labrun
    from ipvtrace.lab.netlab import interruptible

    try:
        require_root()
        with interruptible():
            return labrun.run(args.names or [s.name for s in LAB], args.output, args.json)
    except LabError as exc:
        return _fail(str(exc))


def cmd_branches(args) -> int:
    cat = catalogue.load()
    if args.json:
        print(json.dumps([b.__dict__ for b in cat.branches.values()], indent=1))
        return 0
    if args.markdown:
        print(catalogue.markdown(), end="")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="ipvlan branches (ids as ipvtrace prints them)")
    for col in ("id", "mode", "dir", "what happens", "evidence"):
        t.add_column(col, overflow="fold")
    for b in cat.branches.values():
        t.add_row(b.id, b.mode, b.direction, b.what, b.evidence)
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
