"""The Vagrant path, as far as this machine can check it: the Vagrantfile
loads, the scripts pass shellcheck, and it runs the same in-guest runner as
the QEMU tier."""
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [REPO / "vagrant" / "run-matrix", REPO / "tests" / "guest" / "run", REPO / ".ci" / "run",
           *sorted((REPO / "vagrant" / "provision").glob("*.sh")),
           *sorted(p for p in (REPO / "scripts").iterdir() if p.is_file())]


def test_vagrantfile_validates():
    assert shutil.which("vagrant"), "scripts/setup installs Debian's vagrant"
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO / "vagrant",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "validated successfully" in r.stdout, r.stdout + r.stderr
    for box in ("ubuntu2204", "ubuntu2404", "debian12", "fedora"):
        assert f"==> {box}:" in r.stdout


def test_shellcheck():
    assert shutil.which("shellcheck"), "scripts/setup installs shellcheck"
    r = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_one_runner_for_qemu_and_vagrant():
    runner = "tests/guest/run"
    assert f"/ipvtrace/{runner}" in (REPO / "vagrant" / "run-matrix").read_text()
    assert f"sh {runner}" in (REPO / "tests" / "test_real_kernels.py").read_text()
    assert runner in (REPO / "scripts" / "refresh-fixtures").read_text()
