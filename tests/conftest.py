"""Test tiers.

- tests/*.py: run anywhere (replay of kept real-kernel recordings, synthetic
  event streams, bad files, CLI); the VM tier (marker `vm`) boots Debian
  kernels in QEMU and runs tests/guest inside them.
- tests/guest/: the in-guest suite, collected only when IPVTRACE_GUEST=1 (set
  by tests/guest/run inside a VM or a Vagrant box). There, a missing
  prerequisite is a failure, never a skip.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

collect_ignore = [] if os.environ.get("IPVTRACE_GUEST") == "1" else ["guest"]
