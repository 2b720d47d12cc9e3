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


def test_struct_offsets_come_from_this_kernels_btf():
    """The running kernel's /sys/kernel/btf/vmlinux gives the struct offsets
    the probe plan compiles with, and they are the ones its image's BTF holds
    (the compile check proves those equal the headers' offsetof)."""
    import os

    from ipvtrace.capture import btf, compile_check, probes

    plan = probes.build()
    got = {f.split("=")[0][2:]: int(f.split("=")[1]) for f in plan.cflags
           if f.startswith("-DIPVT_OFF_")}
    image = btf.offsets(compile_check.vmlinuz_btf(Path(f"/boot/vmlinuz-{os.uname().release}")))
    assert got == image and set(got) == set(btf.FIELDS), (got, image)
    assert not [n for n in plan.notes if "struct offsets" in n], plan.notes
