"""A plain (non-editable) install carries the BPF C and the catalogue."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_install_has_bpf_and_catalogue(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                        "--disable-pip-version-check", str(REPO)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("from ipvtrace.model import layout, catalogue\n"
            "assert 'site-packages' in str(layout.BPF_DIR), layout.BPF_DIR\n"
            "assert (layout.BPF_DIR / 'ipvtrace.c').exists()\n"
            "print(layout.current().size, len(catalogue.load().branches))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from ipvtrace.model import catalogue, layout

    assert r.stdout.split() == [str(layout.current().size), str(len(catalogue.load().branches))]
