"""heap.keep_batches: a batch's large buffers are not faulted in again by
the next batch (the page faults are what it is for, so they are what is
counted), and a threshold the user set in the environment is left alone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# 200 batches, each holding a 2 MiB block and the 2 MB text of its rows at
# once, then freeing both, as replay does with a recording block; prints
# keep_batches()'s answer and the minor faults the batches took
_BATCHES = """
import resource, sys
from ipvtrace import heap
kept = heap.keep_batches() if sys.argv[1] == "keep" else None
row = "x" * 1000
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    block = b"\\1" * (2 << 20)
    text = "\\n".join([row] * 2000)
    del block, text
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _batches(how: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = subprocess.run([sys.executable, "-c", _BATCHES, how], capture_output=True, text=True,
                       env={**clean, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    kept, faults = r.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only (mallopt)")
def test_large_buffers_are_faulted_in_once_not_per_batch():
    # without: glibc gives the freed 4 MB back each batch (~1,000 faults a batch)
    _, plain = _batches("plain")
    kept, faults = _batches("keep")
    assert kept == "True"
    assert plain > 200 * 512 / 2, plain      # the cost it removes is there to remove
    assert faults < 4 * 1024, faults          # the buffers' pages once, not per batch


def test_a_threshold_set_in_the_environment_is_left_as_set():
    kept, faults = _batches("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept == "False"
    assert faults > 200 * 512 / 2, faults    # still the user's threshold: a mapping per block
