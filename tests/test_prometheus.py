"""`ipvtrace stats` exports: the Prometheus textfile and the HTTP endpoint
carry the same numbers as the report, parsed back by prometheus_client."""
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipvtrace import cli
from ipvtrace.output.prometheus import PrometheusExport, parse_listen

REPORT = {
    "elapsed_s": 3.0, "kernel": "6.12.117+deb12-amd64", "probes": 21, "packets": 7,
    "branches": {"tx.l2.local": 5, "tx.l2.private_drop": 2},
    "rows": [
        {"branch": "tx.l2.local", "delivery": "delivered", "from": "eth0@pod-a",
         "to": "eth0@pod-b", "reason": None, "packets": 5, "per_s": 1.0},
        {"branch": "tx.l2.private_drop", "delivery": "dropped", "from": "eth0@pod-a",
         "to": "eth0@pod-b", "reason": None, "packets": 2, "per_s": 0.0},
    ],
    "kernel_stats": {"stack_mismatch": 1, "kprobe_missed.rx_ret": 1},
    "kprobe_misses": {"rx_ret": 1, "xmit_ret": 0}, "kprobe_misses_total": 1,
}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def packets(fams) -> dict:
    return {(s.labels["branch"], s.labels["delivery"]): s.value
            for s in fams["ipvtrace_packets"].samples if s.name == "ipvtrace_packets_total"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_textfile_and_http_agree_with_the_report(tmp_path):
    prom = tmp_path / "ipvtrace.prom"
    port = free_port()
    export = PrometheusExport(prom, ("127.0.0.1", port))
    export(REPORT)
    from_file = families(prom.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        from_http = families(r.read().decode())
    for fams in (from_file, from_http):
        assert packets(fams) == {("tx.l2.local", "delivered"): 5.0,
                                 ("tx.l2.private_drop", "dropped"): 2.0}
        misses = {s.labels["probe"]: s.value for s in fams["ipvtrace_kprobe_misses"].samples
                  if s.name.endswith("_total")}
        assert misses == {"rx_ret": 1.0, "xmit_ret": 0.0}
        assert fams["ipvtrace_up"].samples[0].value == 1
    assert not list(tmp_path.glob("*.tmp*")), "the textfile is written by rename"
    assert prom.stat().st_mode & 0o777 == 0o600, "it names namespaces: owner only"
    export(dict(REPORT, ended_by="SIGINT"))   # stats ends: counters stay, up goes to 0
    last = families(prom.read_text())
    assert last["ipvtrace_up"].samples[0].value == 0
    assert packets(last) == {("tx.l2.local", "delivered"): 5.0, ("tx.l2.private_drop", "dropped"): 2.0}


def test_listen_address_forms():
    assert parse_listen("9437") == ("127.0.0.1", 9437)   # loopback unless an address is given
    assert parse_listen("0.0.0.0:9437") == ("0.0.0.0", 9437)
    assert parse_listen("127.0.0.1:9437") == ("127.0.0.1", 9437)
    assert parse_listen("[::1]:9437") == ("::1", 9437)
    for bad in ("abc", "1.2.3.4:", "70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_stats_refuses_bad_output_before_attaching(tmp_path, capsys):
    assert cli.main(["stats", "--listen", "nope"]) == 2
    assert cli.main(["stats", "--prometheus", str(tmp_path / "no" / "dir" / "x.prom")]) == 1
    err = capsys.readouterr().err
    assert "bad --listen" in err and "is not a directory" in err
