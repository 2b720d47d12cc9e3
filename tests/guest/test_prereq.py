"""A real kernel where the ipvlan module is not loaded: a one-line error that
says what to do, before anything is compiled or attached."""
import subprocess
import sys
from pathlib import Path


def test_ipvlan_module_not_loaded(tmp_path):
    r = subprocess.run(["rmmod", "ipvlan"], capture_output=True, text=True)
    assert r.returncode == 0 and not Path("/sys/module/ipvlan").exists(), r.stderr
    try:
        out = tmp_path / "x.ipvt"
        r = subprocess.run([sys.executable, "-m", "ipvtrace", "record", "-o", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            "ipvtrace: error: the ipvlan module is not loaded: modprobe ipvlan "
            "(creating an ipvlan device loads it too)"]
        assert not out.exists() and not Path(str(out) + ".partial").exists()
    finally:
        subprocess.run(["modprobe", "ipvlan"], check=True)
