"""Bad files: a one-line error naming the problem, a non-zero exit, no traceback."""
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = Path(__file__).parent / "fixtures" / "article-6.12.ipvt"


def replay(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(path), *extra],
                          capture_output=True, text=True, timeout=60)


def assert_one_line_error(r: subprocess.CompletedProcess, words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ipvtrace: error: ")
    assert words in lines[0], lines[0]
    assert r.stdout == ""


def write(tmp_path: Path, data: bytes, name: str = "bad.ipvt") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_empty(tmp_path):
    assert_one_line_error(replay(write(tmp_path, b"")), "empty file")


def test_not_a_recording(tmp_path):
    assert_one_line_error(replay(write(tmp_path, b"hello world\n" * 10)), "not an ipvtrace recording")


def test_missing(tmp_path):
    assert_one_line_error(replay(tmp_path / "nope.ipvt"), "no such file")


def test_directory(tmp_path):
    assert_one_line_error(replay(tmp_path), "is a directory")


def rows(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(l) for l in r.stdout.splitlines()]


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.05])
def test_cut_recording_replays_up_to_the_cut(tmp_path, keep):
    """A recorder killed mid-run leaves a file without trailer: replay reads
    it up to its last whole frame, warns once, and exits 0. Rows finished
    before the cut are exactly those of the whole file; the packets the cut
    left open are incomplete, never guessed."""
    data = GOOD.read_bytes()
    start = 15 + struct.unpack_from("<I", data, 11)[0]   # the frames after the header
    r = replay(write(tmp_path, data[: start + int((len(data) - start) * keep)]), "--json")
    assert r.returncode == 0, r.stderr
    warn = r.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith("ipvtrace: warning: ") and "cut at byte" in warn[0]
    # kernel symbol names live in the trailer, which a cut file lacks: compare
    # what the rows say, not how a drop location is spelled
    def key(x):
        return json.dumps({k: x.get(k) for k in ("time", "branch", "delivery", "from", "to",
                                             "summary", "complete", "mcast")}, sort_keys=True)
    full = [key(x) for x in rows(replay(GOOD, "--json"))]
    cut = rows(r)
    assert len(cut) < len(full) if keep < 0.9 else len(cut) <= len(full)
    for row in cut:
        if row["complete"]:
            assert key(row) in full, row["summary"]


def test_cut_inside_the_header(tmp_path):
    hlen = struct.unpack_from("<I", GOOD.read_bytes(), 11)[0]
    assert_one_line_error(replay(write(tmp_path, GOOD.read_bytes()[: 15 + hlen // 2])),
                          "truncated inside the header")


def test_truncated_inside_magic(tmp_path):
    assert_one_line_error(replay(write(tmp_path, GOOD.read_bytes()[:9])), "truncated")


def test_wrong_container_version(tmp_path):
    data = bytearray(GOOD.read_bytes())
    struct.pack_into("<H", data, 8, 99)
    assert_one_line_error(replay(write(tmp_path, bytes(data))), "version 99")


def test_newer_event_format(tmp_path):
    # the header's own version (its first key after "format"), one digit for another
    data = re.sub(rb'"format_version": \d', b'"format_version": 9', GOOD.read_bytes(), count=1)
    assert_one_line_error(replay(write(tmp_path, data)), "newer than this ipvtrace reads")


def test_corrupted_frame(tmp_path):
    data = bytearray(GOOD.read_bytes())
    # the first event frame follows the header frame: smash its type byte
    hlen = struct.unpack_from("<I", data, 11)[0]
    data[10 + 5 + hlen] = 0x7F
    assert_one_line_error(replay(write(tmp_path, bytes(data))), "corrupted")


def test_corrupted_header_json(tmp_path):
    data = bytearray(GOOD.read_bytes())
    data[16] = ord("!")
    assert_one_line_error(replay(write(tmp_path, bytes(data))), "corrupted header")


def test_partial_file_of_a_killed_recorder(tmp_path):
    p = tmp_path / "x.ipvt.partial"
    data = GOOD.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    r = replay(p)
    assert r.returncode == 0 and "cut at byte" in r.stderr, r.stderr


def test_good_file_still_reads(tmp_path):
    r = replay(GOOD, "--json")
    assert r.returncode == 0 and r.stdout.count("\n") > 10
