"""`ipvtrace stats` for node monitoring: the Prometheus text exposition.

prometheus_client renders the format; this only maps a stats report to
metric families. `--prometheus FILE` rewrites FILE atomically every reading
(for node_exporter's textfile collector); `--listen [ADDR:]PORT` serves the
latest reading over HTTP.
"""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ipvtrace.output.files import write_private_atomic


class StatsCollector:
    """A prometheus_client collector over the latest stats report."""

    def __init__(self) -> None:
        self.report: dict | None = None
        self.stopped = False   # probes detached: the last counters, ipvtrace_up 0

    def __call__(self, report: dict) -> None:
        self.report = report

    def collect(self):
        r = self.report
        up = GaugeMetricFamily("ipvtrace_up", "1 while ipvtrace stats has its probes attached",
                               labels=["kernel"])
        up.add_metric([r["kernel"] if r else ""], 1 if r and not self.stopped else 0)
        yield up
        if r is None:
            return
        pk = CounterMetricFamily(
            "ipvtrace_packets",
            "Packets the ipvlan driver handled, by branch (mcast.*: per delivery), "
            "counted in the kernel",
            labels=["branch", "delivery", "from", "to", "reason"])
        for row in r["rows"]:
            pk.add_metric([row["branch"], row["delivery"] or "", row["from"], row["to"],
                           row["reason"] or ""], row["packets"])
        yield pk
        ks = CounterMetricFamily(
            "ipvtrace_kernel_events",
            "Repairs and overflows counted by the BPF program (stack_mismatch: a missed "
            "return probe; counts_full: the counter map had no room)", labels=["counter"])
        for k, v in sorted(r["kernel_stats"].items()):
            ks.add_metric([k], v)
        yield ks
        km = CounterMetricFamily("ipvtrace_kprobe_misses",
                                 "Probe hits the kernel did not run the BPF program for",
                                 labels=["probe"])
        for k, v in r["kprobe_misses"].items():
            km.add_metric([k], v)
        yield km


class PrometheusExport:
    """A sink for run_stats: textfile and/or HTTP."""

    def __init__(self, textfile: Path | None = None, listen: tuple[str, int] | None = None) -> None:
        self.collector = StatsCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.textfile = textfile
        if listen is not None:
            start_http_server(listen[1], addr=listen[0], registry=self.registry)

    def __call__(self, report: dict) -> None:
        self.collector(report)
        if report.get("ended_by"):   # the last reading, taken as the probes go
            self.collector.stopped = True
        if self.textfile is not None:
            # tmp file + rename, owner-only (it names namespaces and devices)
            write_private_atomic(self.textfile, generate_latest(self.registry))


def parse_listen(text: str) -> tuple[str, int]:
    """'9437' or '127.0.0.1:9437' or '[::1]:9437' -> (addr, port)."""
    host, _, port = text.rpartition(":")
    # a bare port binds the loopback only: the metrics name the node's
    # namespaces and devices; publishing them is the user's choice (ADDR:PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad --listen {text!r}: want PORT or ADDR:PORT")
    return host, int(port)
