"""Run commands on real Debian kernels in QEMU (for kernels without ipvlan here)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def guest_script(command: str, repo: Path = REPO) -> str:
    """The shell script a guest runs: environment, modules, then *command*."""
    venv = repo / ".venv" / "bin"
    return f"""set -u
export PATH={venv}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 IPVTRACE_IN_VM=1
export PYTHONPATH={repo}
export IPVTRACE_OUT="${{IPVTRACE_OUT:-$PWD}}"   # the writable work dir (the root is read-only)
modprobe ipvlan; modprobe veth
cd {repo}
echo "guest: $(uname -r), $(nproc) cpu"
{command}
"""
