"""Combine the two benchmark parts into bench/results/DATE-TIME-KERNEL.json and a
table of ratios measured in the same run."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path


def _guest() -> str:
    """How the datapath part ran: `(tcg, 123 s)` from the VM runner's log."""
    log = Path("build/bench/vm.log")
    if log.exists():
        for line in log.read_text().splitlines():
            if line.startswith("====="):
                return line.strip("= ")
    return f"this machine's kernel ({platform.release()})"


def startup_lines(dp: dict) -> list[str]:
    """Start-up to "tracing", compared in the same state of the page cache:
    the first stats start (after datapath.py dropped the cache) with the
    minimal program's start after dropping it again, and the later stats
    starts (the slower of them) with the minimal program's next start."""
    minimal = dp["minimal_bcc_startup_s"]
    if "minimal_bcc_startup_cold_s" not in dp:   # a datapath.json before 2026-12-05 17:30
        return [f"start-up to tracing: ipvtrace record {dp['record']['startup_s']:.1f} s, "
                f"stats {dp['stats']['startup_s']:.1f} s, minimal bcc program {minimal:.1f} s, "
                f"bpftrace {dp['bpftrace_ref']['startup_s']:.1f} s"]
    later = [dp[k]["startup_s"] for k in ("stats_costs", "veth_stats") if k in dp]
    cold, cold_min = dp["stats"]["startup_s"], dp["minimal_bcc_startup_cold_s"]
    how = ("cold (the page cache dropped before each)" if dp.get("caches_dropped", True) else
           "first starts (the page cache could not be dropped: not cold)")
    out = [f"start-up to tracing, {how}: stats {cold:.1f} s, "
           f"minimal bcc program {cold_min:.1f} s: {cold / cold_min:.2f}x"]
    if later:
        out.append(f"start-up to tracing, warm: stats {max(later):.1f} s (the slower of its "
                   f"later starts: {', '.join(f'{t:.1f}' for t in later)} s), minimal bcc program "
                   f"{minimal:.1f} s: {max(later) / minimal:.2f}x; record "
                   f"{dp['record']['startup_s']:.1f} s, bpftrace {dp['bpftrace_ref']['startup_s']:.1f} s")
    return out


def main() -> int:
    dp = json.loads(Path(sys.argv[1]).read_text())
    rp = json.loads(Path(sys.argv[2]).read_text())
    base = (dp["untraced"]["pps"] + dp["untraced_again"]["pps"]) / 2
    rows = [(name, dp[key]["pps"]) for name, key in (  # rows an older datapath.py lacks: left out
        ("stats (counters in the kernel)", "stats"), ("record", "record"),
        ("record, bcc's per-event callback instead of the mapped ring", "record_bcc_callback"),
        ("live --json", "live_json"),
        ("stats disarmed: every probe attached, none gathering evidence (the floor)",
         "stats_disarmed"),
        ("record, filter matching nothing", "filter_nothing"),
        ("reference bpftrace (text line per event)", "bpftrace_ref")) if key in dp]
    lines = [f"datapath: UDP 64-byte flood between two ipvlan namespaces, {dp['seconds']} s each,"
             f" kernel {dp['kernel']}, {dp['cpus']} vCPU"
             + (f", clocksource {dp['clocksource']['start']} -> {dp['clocksource']['end']}"
                if "clocksource" in dp else ""),
             f"  untraced: {base:,.0f} packets/s (before {dp['untraced']['pps']:,.0f}, "
             f"after {dp['untraced_again']['pps']:,.0f})"]
    for name, pps in rows:
        lines.append(f"  {name}: {pps:,.0f} packets/s = {pps / base:.2f} of untraced")
    ref = dp["bpftrace_ref"]["pps"]
    lines.append(f"  record / reference = {dp['record']['pps'] / ref:.2f}x, "
                 f"stats / reference = {dp['stats']['pps'] / ref:.2f}x")
    st = dp["stats"]
    lines.append(f"  stats: {st.get('counted_packets', 0):,} packets counted in the kernel "
                 f"(iperf3 saw {st['pps'] * dp['seconds']:,.0f} arrive), "
                 f"{st.get('kprobe_misses', 0)} kprobe misses, no events")
    if "stats_disarmed" in dp:   # the packets it counted before bpftool disarmed it: few
        sd = dp["stats_disarmed"]
        lines.append(f"  stats disarmed: {sd.get('counted_packets', 0):,} packets counted (iperf3 saw "
                     f"{sd['pps'] * dp['seconds']:,.0f} arrive)")
    if "live_json" in dp:   # its loss: the kernel's count, from its last stderr line
        lj = dp["live_json"]
        lost = next((l.split(":")[-1].strip() for l in reversed(lj.get("stderr_tail", []))
                     if l.startswith("lost events")), "?")
        cpu = lj.get("tool_cpu_s")
        lines.append(f"  live_json: {lj['rows']:,} rows printed" if "rows" in lj else
                     "  live_json: rows not counted (its stdout was a pipe read at the end)")
        lines[-1] += (f", {lost} records lost"
                      + (f"; ipvtrace used {cpu:.1f} CPU s of the {dp['seconds']} s flood"
                         if cpu is not None else ""))
    for key in [k for k in ("record", "record_bcc_callback", "filter_nothing") if k in dp]:
        cpu = dp[key].get("tool_cpu_s")
        lines.append(f"  {key}: {dp[key].get('events', 0):,} events, "
                     f"{dp[key].get('lost_events', 0):,} lost"
                     + (f"; ipvtrace used {cpu:.1f} CPU s of the {dp['seconds']} s flood"
                        if cpu is not None else ""))
    for key, build in (("stats_costs", "stats"), ("record_costs", "record")):
        if not dp.get(key, {}).get("prog_costs"):
            continue
        sc_ = dp[key]
        total = sum(c["total_ms"] for c in sc_["prog_costs"]) or 1
        per = dp["seconds"] * sc_["pps"] or 1
        lines.append(f"what each probe costs ({build} build, the kernel's BPF run-time accounting, "
                     f"{sc_['pps']:,.0f} packets/s in that run; "
                     f"{1000 * total / per:.1f} µs of programs a packet):")
        for c in sc_["prog_costs"]:
            if build == "record" and not c["hits"]:
                continue   # the stats table lists every program once
            lines.append(f"  {c['prog']:<32} {c['hits']:>10,} hits ({c['hits'] / per:.1f}/packet) "
                         f"{c['ns_per_hit'] or 0:>6} ns/hit  {100 * c['total_ms'] / total:4.1f}%")
        if build == "stats":
            lines.append("  (a tail-called program, on_worker_hit, runs inside its caller: the "
                         "kernel counts its runs and time there, and shows it with 0 hits)")
    if "veth_untraced" in dp:
        vb = (dp["veth_untraced"]["pps"] + dp["veth_untraced_again"]["pps"]) / 2
        lines.append(f"traffic that never touches ipvlan (veth pair): untraced {vb:,.0f} packets/s; "
                     f"under stats {dp['veth_stats']['pps'] / vb:.2f}, "
                     f"under record {dp['veth_record']['pps'] / vb:.2f} of it "
                     f"(record kept {dp['veth_record'].get('events', 0)} events)")
    if "soak_live_json" in dp:
        s = dp["soak_live_json"]["rss_samples_kib"]
        lines.append(f"memory: live --json under the flood for {dp['soak_live_json'].get('seconds', '?')} s: "
                     + ", ".join(f"{t:.0f} s {k / 1024:.0f} MiB" for t, k in s)
                     + f" (RSS); {' '.join(dp['soak_live_json']['summary_tail'])}")
    lines.extend(startup_lines(dp))
    lines.append(f"replay ({rp['records']:,} records, {rp['packets']:,} packets, here): "
                 f"--json {rp['replay_json_packets_per_s']:,.0f} packets/s, "
                 f"--stats {rp['replay_stats_packets_per_s']:,.0f} packets/s; "
                 f"reading the bytes alone {rp['read_bytes_s']:.2f} s vs {rp['replay_json_s']:.1f} s; "
                 f"peak RSS {rp['replay_json_peak_rss_kib'] / 1024:.0f} MiB"
                 + (f"; the start (Python, imports, a small recording) {rp['start_s']:.2f} s, "
                    "in each figure" if "start_s" in rp else ""))
    if rp.get("own"):
        o = rp["own"]
        lines.append(f"replay of this run's own recording ({o['packets']:,} packets, "
                     f"{o['records']:,} records, {o['bytes_per_packet']:.0f} bytes/packet): "
                     f"--json {o['replay_json_packets_per_s']:,.0f} packets/s, "
                     f"--stats {o['replay_stats_packets_per_s']:,.0f} packets/s")
    lines.append(f"recording size: {rp['bytes_per_packet']:.0f} bytes/packet (synthetic "
                 f"pod-to-pod); real record run: "
                 f"{dp['record'].get('bytes', 0) / max(1, dp['record'].get('events', 1)):.0f} bytes/record")
    sc = json.loads(Path(sys.argv[3]).read_text() or "{}") if len(sys.argv) > 3 else {}
    if sc:
        lines.append(f"node scale ({sc['pods']} pods: a namespace and an ipvlan slave each, "
                     f"built in {sc['build_s']:.0f} s): start-up snapshot {sc['snapshot_take_s']:.2f} s "
                     f"for {sc['namespaces_seen']} namespaces ({sc['slaves_parent_resolved']} of "
                     f"{sc['slaves']} slaves tied to their parent without a netlink call per pair); "
                     f"one new pod's refresh {sc['refresh_one_pod_s'] * 1000:.1f} ms; per-packet "
                     f"device/port lookup {sc['lookup_ns']:.0f} ns")
    text = "\n".join(lines)
    print(text)
    now = datetime.datetime.now(datetime.timezone.utc)
    # the time too: a second run the same day must not replace the first
    out = Path("bench/results") / f"{now:%Y-%m-%d-%H%M}-{dp['kernel']}.json"
    out.write_text(json.dumps({"date": now.isoformat(), "machine": {
        "host": platform.node(), "cpus": os.cpu_count(), "host_kernel": platform.release(),
        "guest": _guest()},
        "datapath": dp, "replay": rp, "scale": sc, "summary": lines}, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
