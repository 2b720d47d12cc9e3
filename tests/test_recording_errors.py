"""Bad files: a one-line error naming the problem, a non-zero exit, no traceback."""
import shutil
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


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.05])
def test_truncated(tmp_path, keep):
    data = GOOD.read_bytes()
    r = replay(write(tmp_path, data[: int(len(data) * keep)]))
    assert_one_line_error(r, "truncated")


def test_truncated_inside_magic(tmp_path):
    assert_one_line_error(replay(write(tmp_path, GOOD.read_bytes()[:9])), "truncated")


def test_wrong_container_version(tmp_path):
    data = bytearray(GOOD.read_bytes())
    struct.pack_into("<H", data, 8, 99)
    assert_one_line_error(replay(write(tmp_path, bytes(data))), "version 99")


def test_newer_event_format(tmp_path):
    data = GOOD.read_bytes().replace(b'"format_version": 1', b'"format_version": 7', 1)
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


def test_partial_file_named(tmp_path):
    p = tmp_path / "x.ipvt.partial"
    shutil.copy(GOOD, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(replay(p), "truncated")


def test_good_file_still_reads(tmp_path):
    r = replay(GOOD, "--json")
    assert r.returncode == 0 and r.stdout.count("\n") > 10
