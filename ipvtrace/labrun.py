"""`ipvtrace lab`: run the article's scenarios traced, and set each step's
packets next to the article's claim for it."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ipvtrace.output import recording
from ipvtrace.output.render import LineSink
from ipvtrace.lab.netlab import checkpoint
from ipvtrace.lab.scenarios import Scenario, Step, guest_ready, record_scenarios
from ipvtrace.replay import run_replay


def steps_path(recording_path: Path) -> Path:
    """Where `ipvtrace lab -o FILE` keeps the steps (claims, results, time windows)."""
    return recording_path.with_name(recording_path.name + ".steps.json")


def step_json(sc: Scenario, st: Step) -> dict:
    return {"scenario": sc.name, "step": st.label, "ns": st.ns, "dst": st.dst,
            "claim": st.claim, "reachable": st.reachable, "agrees": st.agrees,
            "window": list(st.window), "group": _group(st.ns)}


def assign(rows: list[dict], steps: list[dict]) -> dict[str, list[dict]]:
    """Rows of each step (by its time window and its node's namespaces)."""
    out: dict[str, list[dict]] = {d["step"]: [] for d in steps}
    for row in rows:
        for d in steps:
            if d["window"][0] <= row["ts"] <= d["window"][1] and _involves(row, d["group"]):
                out[d["step"]].append(row)
                break
    return out


def _group(ns: str) -> str:
    """ipvt-2a-node1ns -> ipvt-2a-: the namespaces of one node of a scenario."""
    return ns.rsplit("-", 1)[0] + "-"


def _involves(row: dict, prefix: str) -> bool:
    return any(ref and str(ref.get("netns", "")).startswith(prefix)
               for ref in (row.get("from"), row.get("to")))


def _ports(snap: dict) -> list[str]:
    """`ens10@ipvt-4b-host: ipvlan port mode l2 (flags), slaves ...` from a snapshot."""
    names = {ns["inum"]: ns.get("name") or "root" for ns in snap.get("namespaces", [])}
    devs = {(d["netns"], d["ifindex"]): d for d in snap.get("devices", [])}
    ports: dict[tuple[int, int], list[dict]] = {}
    for d in snap.get("devices", []):
        if d.get("ipvlan") and d.get("link_netns") is not None:
            ports.setdefault((d["link_netns"], d["link"]), []).append(d)
    out = []
    for key, slaves in sorted(ports.items(), key=lambda kv: str(kv[0])):
        parent = devs.get(key, {}).get("name", f"if{key[1]}")
        mode = slaves[0]["ipvlan"]["mode"]
        flags = "".join(f" {f}" for f in slaves[0]["ipvlan"]["flags"])
        members = ", ".join(f"{s['name']}@{names.get(s['netns'], s['netns'])}" for s in slaves)
        out.append(f"{parent}@{names.get(key[0], key[0])}: ipvlan port, mode {mode}{flags}; "
                   f"slaves {members}")
    return out


def _claim(v: bool | None) -> str:
    return "-" if v is None else ("reachable" if v else "unreachable")


def run(names: list[str], output: Path | None, as_json: bool, console: Console | None = None) -> int:
    guest_ready()
    console = console or Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="ipvtrace-lab-") as tmp:
        out = (output or Path(tmp) / "lab.ipvt").resolve()
        ran = record_scenarios(names, out)
        rows: list[dict] = []
        run_replay(out, rows.append)
        out_snapshot = recording.read(out).header.get("snapshot", {})
        checkpoint()
    steps = [(sc, st) for sc in ran for st in sc.steps]
    step_list = [step_json(sc, st) for sc, st in steps]
    if output is not None:
        steps_path(out).write_text(json.dumps(step_list, indent=1))

    def step_of(row: dict):
        for sc, st in steps:
            if st.window[0] <= row["ts"] <= st.window[1] and _involves(row, _group(st.ns)):
                return sc, st
        return None, None

    if as_json:
        for d in step_list:
            sys.stdout.write(json.dumps({"lab_step": d}, separators=(",", ":")) + "\n")
        for row in rows:
            sc, st = step_of(row)
            row["lab"] = {"scenario": sc.name, "step": st.label} if st else None
            sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
        return 0
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        _, st = step_of(row)
        if st is not None and _involves(row, _group(st.ns)):
            by_step.setdefault(id(st), []).append(row)
    ports = _ports(out_snapshot)
    disagreements = 0
    for sc in ran:
        console.print(Text(f"\n{sc.title}  [{sc.name}]", style="bold"))
        for line in ports:
            if any(line.startswith(f"{p} ") or f"@{p}:" in line for p in sc.namespaces):
                console.print(Text(f"  {line}", style="dim"))
        for st in sc.steps:
            agree = st.agrees
            verdict = ("kernel agrees" if agree else "KERNEL DISAGREES") if agree is not None else ""
            disagreements += agree is False
            t = Text(f"\n  {st.label}: ping {st.dst} from {st.ns}\n    article: {_claim(st.claim)}"
                     f"   kernel: {_claim(st.reachable)}   ")
            t.append(verdict, style="green" if agree else "bold red")
            console.print(t)
            sink = LineSink(console, why=True)
            for row in sorted(by_step.get(id(st), []), key=lambda r: r["ts"]):
                sink(row)
    console.print(Text(f"\n{len(steps)} steps, {disagreements} where the kernel disagrees "
                       "with the article", style="bold"))
    return 0


