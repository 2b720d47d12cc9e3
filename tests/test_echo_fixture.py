"""The recording tests/guest/test_rps.py made on Debian's 6.12 (QEMU, two
vCPUs): UDP datagrams from an L2 pod to its parent's own address, the
sender pinned to CPU 0 and the parent's receive queue steered to CPU 1 by
RPS. Some of the parent's RX contexts closed, and reached the ring, before
the TX context of the same frame: the case the kernel's IPVT_F_ECHO flag
exists for. Replayed here on any machine."""
from pathlib import Path

import echo_checks
from ipvtrace import replay
from ipvtrace.model import layout

FIXTURE = Path(__file__).parent / "fixtures" / "rps-6.12.ipvt"


def test_every_frame_to_the_parent_is_one_row_joined_with_its_rx_on_the_other_cpu():
    rows: list[dict] = []
    summary = replay.run_replay(FIXTURE, sink=rows.append)
    assert summary["lost_events"] == 0 and summary["header"]["kernel"].startswith("6.12.")
    echo_checks.check_to_parent_rows(rows, echo_checks.SENT, tx_cpu=0, rx_cpu=1)


def test_the_kept_run_has_rx_records_that_came_before_their_tx():
    """Why this recording is kept: read in file order, some flagged RX
    records precede their TX record (the guest run that made it printed how
    many). Without one, the test above would show only the usual order."""
    assert echo_checks.early_echoes(FIXTURE) >= 1


def test_read_without_the_flag_those_rx_records_become_rows_of_their_own(monkeypatch):
    """The same file read as a recording without IPVT_F_ECHO in its layout
    (made before the flag): each RX record that came before its TX becomes a
    complete rx.to_host row of its own, and its frame's TX row waits in vain
    (incomplete) -- what ipvtrace printed before the flag. One such row per
    early record, counted from the file order above: the flag is what
    joins them."""
    early = echo_checks.early_echoes(FIXTURE)
    from_json = layout.Layout.from_json

    def unflagged(d: dict) -> layout.Layout:
        lay = from_json(d)
        lay.flags.pop("echo")
        return lay

    monkeypatch.setattr(layout.Layout, "from_json", staticmethod(unflagged))
    rows: list[dict] = []
    replay.run_replay(FIXTURE, sink=rows.append)
    apart = [r for r in rows if r["branch"] == "rx.to_host"]
    assert len(apart) == early, (len(apart), early)
    assert all(r["complete"] and r["src"] == echo_checks.POD_IP for r in apart), apart[:2]
    assert sum(not r["complete"] and r["branch"] == "tx.l2.to_parent" for r in rows) == len(apart)
