"""Command line: live, record, replay, branches."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, catalogue

EXAMPLES = {
    "live": """examples:
  sudo ipvtrace live                 # one line per packet, as ipvlan handles it
  sudo ipvtrace live --why           # ... with the evidence behind each branch
  sudo ipvtrace live --json | jq .   # one JSON object per packet
  sudo ipvtrace live --duration 10   # stop after 10 seconds
""",
    "record": """examples:
  sudo ipvtrace record -o pods.ipvt                  # until Ctrl-C
  sudo ipvtrace record -o pods.ipvt --duration 30
  sudo ipvtrace record -o t.ipvt --ready-file /tmp/ready &   # scripts: wait for
  while [ ! -e /tmp/ready ]; do sleep 0.2; done               # the file, then
  ping ...; kill -INT %1; wait                                # send traffic
""",
    "replay": """examples:
  ipvtrace replay pods.ipvt               # no root, no bcc: any machine
  ipvtrace replay pods.ipvt --why         # with the evidence for each branch
  ipvtrace replay pods.ipvt --json | jq 'select(.branch=="tx.l2.to_parent")'
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


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


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
    live.add_argument("--json", action="store_true", help="one JSON object per packet")
    live.add_argument("--why", action="store_true", help="print the evidence under each packet")
    live.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    live.add_argument("-o", "--output", type=Path, metavar="FILE", help="also record to FILE")
    live.add_argument("--ready-file", type=Path, metavar="PATH",
                      help="create PATH once the probes are attached")

    rec = sub.add_parser("record", help="trace to a file for replay anywhere (root)",
                         epilog=EXAMPLES["record"], formatter_class=fmt)
    rec.add_argument("-o", "--output", type=Path, metavar="FILE", required=True)
    rec.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    rec.add_argument("--ready-file", type=Path, metavar="PATH",
                     help="create PATH once the probes are attached")

    rep = sub.add_parser("replay", help="read a recording (no root, no bcc)",
                         epilog=EXAMPLES["replay"], formatter_class=fmt)
    rep.add_argument("file", type=Path, metavar="FILE")
    rep.add_argument("--json", action="store_true", help="one JSON object per packet")
    rep.add_argument("--why", action="store_true", help="print the evidence under each packet")

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
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "branches":
            return cmd_branches(args)
        if args.cmd == "replay":
            return cmd_replay(args)
        if args.cmd == "lab":
            return cmd_lab(args)
        if args.cmd == "doctor":
            from .doctor import report

            return report()
        return cmd_trace(args)
    except KeyboardInterrupt:
        print("ipvtrace: interrupted; nothing it set up was left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def _sink(args):
    from .render import JsonSink, LineSink

    return JsonSink() if args.json else LineSink(why=args.why)


def cmd_replay(args) -> int:
    from .recording import RecordingError
    from .session import run_replay

    try:
        summary = run_replay(args.file, _sink(args))
    except RecordingError as exc:
        return _fail(str(exc), 2)
    lost = summary["trailer"].get("lost_events", 0)
    if lost:
        print(f"ipvtrace: {lost} events were lost while recording: packets around them are "
              "marked incomplete", file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from .loader import LoadError
    from .probes import PlanError
    from .session import LiveOptions, run_live

    opts = LiveOptions(output=args.output, duration=args.duration,
                       ready_file=getattr(args, "ready_file", None),
                       sink=_sink(args) if args.cmd == "live" else None)
    try:
        from .loader import require_root

        require_root()
        if args.output is not None:
            parent = args.output.absolute().parent
            if not parent.is_dir():
                return _fail(f"cannot write {args.output}: {parent} is not a directory")
        summary = run_live(opts)
    except (PlanError, LoadError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    lost = summary.get("lost_events", 0)
    tail = f", {lost} events LOST" if lost else ", no events lost"
    if args.cmd == "record":
        print(f"ipvtrace: wrote {summary.get('events', 0)} events to {summary.get('output')}{tail}",
              file=sys.stderr)
    else:
        branches = ", ".join(f"{k} {v}" for k, v in summary["branches"].items()) or "none"
        print(f"ipvtrace: {summary['packets']} packets ({branches}){tail}", file=sys.stderr)
    return 0


def cmd_lab(args) -> int:
    from .netlab import LabError, require_root
    from .scenarios import LAB, SCENARIOS

    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<18} {s.title}")
        return 0
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        return _fail(f"no scenario {', '.join(unknown)}; 'ipvtrace lab --list' names them", 2)
    from . import labrun

    try:
        require_root()
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
