"""Recordings kept from Debian's 6.1 and 6.12 kernels (and 5.10 and 7.2 for
the article, 5.10 for the topologies and stacked parents), replayed on any
machine.

They were made by the in-guest suite (tests/guest/test_article.py,
tests/guest/test_topologies.py) and copied here by scripts/refresh-fixtures;
the checks are the ones the guest runs on fresh recordings.
"""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import article_checks as checks
import lab_checks
import stacked_checks
import topology_checks

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("article-*.ipvt"))
TOPOLOGIES = sorted((Path(__file__).parent / "fixtures").glob("topologies-*.ipvt"))
LABS = sorted((Path(__file__).parent / "fixtures").glob("lab-*.ipvt"))
STACKED = sorted((Path(__file__).parent / "fixtures").glob("stacked-*.ipvt"))


def test_fixtures_present():
    # Debian 12's kernels, and the article on Debian 11's 5.10 and sid's 7.2
    # (scripts/extra-kernel): the same checks, the same branches
    assert {p.stem for p in FIXTURES} == {"article-6.1", "article-6.12", "article-5.10", "article-7.2"}
    # ... and the topologies on 5.10, which cannot show an L3S port's owner
    assert {p.stem for p in TOPOLOGIES} == {"topologies-6.1", "topologies-6.12", "topologies-5.10"}
    assert {p.stem for p in LABS} == {"lab-6.1", "lab-6.12"}
    assert {p.stem for p in STACKED} == {"stacked-6.1", "stacked-6.12", "stacked-5.10"}


@pytest.fixture(scope="module", params=LABS, ids=lambda p: p.stem)
def lab_run(request):
    return lab_checks.load(request.param)


@pytest.mark.parametrize("check", lab_checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_lab_fixture(lab_run, check):
    check(*lab_run)


_REPLAYED: dict[Path, list[dict]] = {}


def replayed(path: Path) -> list[dict]:
    """A fixture's rows as `ipvtrace replay --json` prints them (once per run)."""
    if path not in _REPLAYED:
        _REPLAYED[path] = checks.replay_json(path)
    return _REPLAYED[path]


# each recording with the checks of the topologies it was made from
ROW_CHECKS = [pytest.param(path, check, id=f"{path.stem}-{check.__name__}")
              for module, paths in ((checks, FIXTURES), (topology_checks, TOPOLOGIES),
                                    (stacked_checks, STACKED))
              for path in paths for check in module.ALL_CHECKS]


@pytest.mark.parametrize("path, check", ROW_CHECKS)
def test_fixture_rows(path, check):
    """The guest's check, or where the recording's kernel lacked a probe it
    needs, what ipvtrace says instead (as the guest ran it)."""
    from ipvtrace.output import recording

    missing = {m["name"] for m in recording.read(path).header["plan"].get("missing", [])}
    run = checks.as_shown(check, missing)
    assert run is not None, f"{path.name} lacks {missing & set(check.needs)}: nothing to check"
    run(replayed(path))


@pytest.mark.parametrize("path", FIXTURES + TOPOLOGIES + LABS + STACKED, ids=lambda p: p.stem)
def test_fixture_kernel(path):
    from ipvtrace.output import recording

    rec = recording.read(path)
    kernel = rec.header["kernel"]
    assert kernel.startswith(path.stem.split("-", 1)[1] + "."), kernel
    assert rec.trailer["lost_events"] == 0
    # Debian builds ipvlan_rcv_frame only as a GCC clone
    syms = {p["name"]: p["symbol"] for p in rec.header["plan"]["attach"]}
    assert syms["rcv_frame"].startswith("ipvlan_rcv_frame.isra."), syms
    # runs copied from the ring (container 2) hold no padding the ring added
    assert all(n % 8 == 0 for n in checks.ring_record_lengths(rec))


@pytest.mark.parametrize("path", FIXTURES + TOPOLOGIES + LABS + STACKED, ids=lambda p: p.stem)
def test_table_matches_json(path):
    """The default table and --json describe the same packets, in the same order."""
    table = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(path)],
                           capture_output=True, text=True, check=True).stdout
    rows = checks.replay_json(path)
    lines = [l for l in table.splitlines()[1:] if l.strip() and not l.lstrip().startswith("└")
             and "└ by" not in l]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        assert row["branch"] in line.split(), (line, row["branch"])


@pytest.mark.parametrize("path", FIXTURES + TOPOLOGIES + LABS + STACKED, ids=lambda p: p.stem)
def test_json_fields(path):
    """Every packet carries the fields the README documents."""
    for row in checks.replay_json(path):
        for key in ("branch", "mode", "src", "dst", "proto", "from", "to", "delivery",
                    "complete", "events"):
            assert key in row, key
        for ev in row["events"]:
            assert {"probe", "cpu", "ts"} <= ev.keys()
            if ev["probe"] in ("xmit_ret", "rx_ret", "fwd_ret"):
                assert "ret" in ev
        json.dumps(row)


# recordings of format 1 (one event per probe hit, before context records),
# kept as the kernels made them: a file made by an older ipvtrace still replays
FORMAT1 = Path(__file__).parent / "fixtures" / "format1"


def test_format1_recordings_replay_as_they_did():
    from ipvtrace.output import recording
    art, topo = FORMAT1 / "article-6.12.ipvt", FORMAT1 / "topologies-6.1.ipvt"
    assert {recording.read(p).header["format_version"] for p in (art, topo)} == {1}
    rows = checks.replay_json(art)
    for check in checks.ALL_CHECKS:
        check(rows)
    rows = checks.replay_json(topo)
    for check in topology_checks.ALL_CHECKS:
        check(rows)


def test_a_kernel_that_inlines_rcv_frame_on_rx_replays_as_it_ran():
    """7.2 inlines ipvlan_rcv_frame into its RX path and its multicast worker
    hands frames from outside to slaves by netif_receive_skb: the recording's
    plan says so, and replay names those packets from it as live did
    (rx.local with no rcv_frame hit; mcast.deliver by netif_receive_skb)."""
    from ipvtrace.output import recording

    path = Path(__file__).parent / "fixtures" / "article-7.2.ipvt"
    plan = recording.read(path).header["plan"]
    assert (plan["rcv_frame_rx"], plan["worker_rx"]) == ("inlined", "netif_receive_skb")
    rows = checks.replay_json(path)
    local = [r for r in rows if r["branch"] == "rx.local"]
    assert local and all(r["complete"] for r in local), local
    assert not [e for r in local for e in r["events"] if e["probe"] == "rcv_frame"], local
    assert all("inlined" in r["why"] for r in local), local
    by = {m["by"] for r in rows if r["branch"] == "rx.l2.multicast" for m in r.get("mcast", [])}
    assert by == {"netif_receive_skb"}, by


def test_fixtures_of_every_container_replay():
    """Container 4 (frames in LZ4 blocks, as `record` writes now), container
    3 (zstd blocks), container 2 (RING frames, uncompressed) and container 1
    (one EVENT frame per record) all come from real kernels here, and all
    are read by the tests above."""
    from ipvtrace.output import recording

    by_version: dict[int, list[str]] = {}
    for path in FIXTURES + TOPOLOGIES + LABS + STACKED:
        rec = recording.read(path)
        version = struct.unpack_from("<H", rec.data, len(recording.MAGIC))[0]
        by_version.setdefault(version, []).append(path.stem)
        if version >= 2:
            assert checks.ring_record_lengths(rec), path
        blocks = {t for t, _ in checks.outer_frames(rec) if t in recording.BLOCKS}
        assert blocks == {3: {recording.F_ZSTD}, 4: {recording.F_LZ4}}.get(version, set()), \
            (path, version)
    assert {1, 2, 3, 4} <= by_version.keys(), by_version

