"""python -m ipvtrace.lab.vm --kernel 6.12 [--kernel 6.1] -- COMMAND...

Boots each kernel in QEMU (in parallel) with this machine's root file system
read-only and runs COMMAND in the repository as root; prints each guest's
output and exits non-zero if any guest failed.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import guest_script, qemu


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ipvtrace.lab.vm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", action="append", default=[], help="6.1, 6.12 or a release")
    p.add_argument("--work", type=Path, default=Path("build/vm"), help="per-kernel work dirs here")
    p.add_argument("--cpus", type=int, default=0,
                   help="vCPUs per guest (default: 2, 1 when parallel). Under TCG with 2, one "
                        "vCPU may run code the other just patched stale (a probe attached or "
                        "removed under a flood hung 6.1 guests: docs/commands.md#overhead)")
    p.add_argument("--timeout", type=float, default=2400)
    p.add_argument("--memory", type=int, default=2048, help="MiB per guest (default 2048)")
    p.add_argument("--icount", type=int, metavar="SHIFT", choices=range(0, 11),
                   help="deterministic emulation (TCG): each guest instruction takes 2^SHIFT ns "
                        "of guest time, idle time none, so rates measured in the guest count "
                        "instructions and do not move with this machine's load")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no command")
    kernels = a.kernel or ["6.12"]
    cpus = a.cpus or (1 if len(kernels) > 1 else 2)

    def one(k: str):
        work = (a.work / k).resolve()
        try:
            r = qemu.run(k, guest_script(shlex.join(cmd)), work, cpus=cpus, timeout=a.timeout,
                         memory_mb=a.memory, accel="tcg" if a.icount is not None else None,
                         extra_args=["-icount", f"shift={a.icount},sleep=off"]
                         if a.icount is not None else None)
            return k, r.rc, r.log, f"{r.kernel} ({r.accel}, {r.seconds:.0f} s)"
        except qemu.VMError as exc:
            return k, 1, str(exc), k

    rc = 0
    with ThreadPoolExecutor(len(kernels)) as ex:
        for k, krc, log, what in ex.map(one, kernels):
            print(f"===== {what}: rc={krc}")
            print(log, end="" if log.endswith("\n") else "\n")
            rc = rc or krc
    return rc


if __name__ == "__main__":
    sys.exit(main())
