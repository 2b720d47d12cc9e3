"""Missing prerequisites and bad options: one line that says what to do.

These run on the build machine itself, whose kernel has neither ipvlan nor
kprobes: exactly the situation a user meets on the wrong machine.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "article-6.1.ipvt"


def run(*args, python=sys.executable, pre=(), env=None):
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([*pre, python, *args], capture_output=True, text=True, env=e, timeout=120)


def one_line_error(r, *words):
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def has_ipvlan_and_kprobes() -> bool:
    return Path("/sys/module/ipvlan").exists() and Path("/sys/kernel/tracing/kprobe_events").exists()


@pytest.mark.skipif(has_ipvlan_and_kprobes(), reason="this kernel can trace ipvlan")
def test_kernel_without_ipvlan_or_kprobes(tmp_path):
    assert os.geteuid() == 0, "run the suite as root (.ci/run does)"
    out = tmp_path / "x.ipvt"
    r = run("-m", "ipvtrace", "record", "-o", str(out))
    one_line_error(r, "ipvtrace: error: this kernel")
    assert not out.exists() and not list(tmp_path.iterdir()), "nothing half-written"


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_not_root(tmp_path):
    assert shutil.which("setpriv"), "util-linux setpriv needed"
    r = run("-m", "ipvtrace", "record", "-o", str(tmp_path / "x"), pre=NOBODY)
    one_line_error(r, "needs root", "sudo")


def test_replay_needs_no_root():
    r = run("-m", "ipvtrace", "replay", "--json", str(FIXTURE), pre=NOBODY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") > 10


def test_bcc_missing(tmp_path):
    """A Python without the distribution's site-packages, as a pyenv one is."""
    assert os.geteuid() == 0
    r = run("-S", "-m", "ipvtrace", "record", "-o", str(tmp_path / "x"), python="/usr/bin/python3")
    one_line_error(r, "python3-bpfcc", "PyPI")


@pytest.mark.parametrize("args,words", [
    (["record"], "required: -o"),
    (["record", "-o", "x", "--duration", "-3"], "must be > 0"),
    (["record", "-o", "x", "--duration", "abc"], "not a number"),
    (["replay"], "required: FILE"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options(args, words):
    r = run("-m", "ipvtrace", *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_record_into_missing_directory(tmp_path):
    r = run("-m", "ipvtrace", "record", "-o", str(tmp_path / "no" / "x.ipvt"))
    one_line_error(r, "is not a directory")


def test_lab_unknown_scenario():
    r = run("-m", "ipvtrace", "lab", "nope")
    one_line_error(r, "no scenario nope")


def test_lab_list():
    r = run("-m", "ipvtrace", "lab", "--list")
    assert r.returncode == 0 and "article-l2" in r.stdout and "article-l3" in r.stdout


@pytest.mark.parametrize("cmd", ["live", "record", "replay", "lab", "branches"])
def test_help_has_examples(cmd):
    r = run("-m", "ipvtrace", cmd, "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


def test_branches_json_is_the_catalogue():
    import json
    import tomllib

    r = run("-m", "ipvtrace", "branches", "--json")
    ids = [b["id"] for b in json.loads(r.stdout)]
    toml = tomllib.loads((REPO / "ipvtrace" / "model" / "branches.toml").read_text())
    assert ids == [b["id"] for b in toml["branch"]]
