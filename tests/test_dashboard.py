"""The live dashboard: rows come from the consumer's thread while rich's
refresh thread draws; at 80 to 130 columns the TIME, BRANCH and DELIVERY
cells are never cut."""
import sys
import threading

from rich.console import Console

from ipvtrace.model import catalogue
from ipvtrace.output.render import Dashboard

DELIVERIES = ("delivered", "forward_failed", "slave_down", "dropped", "queued", "pending")


def row(i: int, branch: str, delivery: str) -> dict:
    return {"time": 47.842123 + i, "branch": branch, "delivery": delivery,
            "from": {"dev": "eth0", "netns": "pod-with-a-long-name-" + "x" * 20},
            "to": {"dev": "ens10", "netns": "host-namespace-" + "y" * 20},
            "summary": "ICMP 192.168.100.101 > 172.18.22.114 echo-request seq 12345 " + "z" * 40,
            "mcast": [{"branch": "mcast.deliver"}] if i % 3 == 0 else []}


def test_time_branch_and_delivery_are_never_cut():
    ids = sorted(catalogue.load().branches)
    for width in (80, 100, 130):
        d = Dashboard(recent=len(ids), console=Console(width=width))
        for i, b in enumerate(ids):
            d(row(i, b, DELIVERIES[i % len(DELIVERIES)]))
        con = Console(width=width, record=True, highlight=False)
        con.print(d)
        text = con.export_text()
        for i, b in enumerate(ids):
            line = next(l.strip() for l in text.splitlines()
                        if l.strip().startswith(f"{47.842123 + i:.6f} "))
            assert f" {b} " in line + " ", (width, line)
            assert line.rstrip().endswith(DELIVERIES[i % len(DELIVERIES)]), (width, line)
            assert len(line) <= width


def test_rows_from_one_thread_while_another_draws():
    d = Dashboard(recent=15, console=Console(width=120))
    errors: list[BaseException] = []
    stop = threading.Event()

    def feed():
        try:
            for i in range(60_000):
                d(row(i, "tx.l2.local", "delivered"))
        except BaseException as exc:   # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            stop.set()

    def draw():
        con = Console(width=120, file=open("/dev/null", "w"))
        try:
            while not stop.is_set():
                con.print(d)
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=feed), threading.Thread(target=draw)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as the interpreter can
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert d.packets == 60_000 and len(d.rows) == 15
