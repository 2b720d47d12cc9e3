"""Boot one Debian kernel in QEMU and run a shell script inside it.

The guest sees the host's root file system read-only (9p) plus one writable
share, the *work dir*, mounted at the same absolute path as on the host: the
script, its log and anything it writes (recordings) live there.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import initramfs

KERNEL_ALIASES = {
    # Debian 12's default kernel, its backported 6.12 and the PREEMPT_RT 6.1:
    # never hard-code the ABI number, read what /boot has. "6.1" must not
    # pick the RT build, which the glob 6.1.*-amd64 also matches.
    "6.1": ("6.1.*-amd64", "generic"),
    "6.12": ("6.12.*-amd64", "generic"),
    "6.1-rt": ("6.1.*-rt-amd64", "rt"),
    "6.12-rt": ("6.12.*-rt-amd64", "rt"),
}


class VMError(RuntimeError):
    """The guest could not be booted or did not finish."""


@dataclass
class VMResult:
    kernel: str
    rc: int
    log: str
    console: str
    seconds: float
    accel: str


def _flavour(release: str) -> str:
    """Debian's builds of one version: -rt- (PREEMPT_RT), -cloud- (no 9p, so
    this runner cannot boot it) and the generic one, which the aliases mean."""
    for flavour in ("rt", "cloud"):
        if f"-{flavour}-" in release:
            return flavour
    return "generic"


def resolve_kernel(name: str) -> str:
    """Map an alias ('6.1', '6.12', '6.1-rt') or a full release
    ('6.1.0-57-rt-amd64') to an installed kernel release."""
    pattern, flavour = KERNEL_ALIASES.get(name, (name, None))
    found = sorted(
        (r for r in (Path(p).name.removeprefix("vmlinuz-")
                     for p in glob.glob(f"/boot/vmlinuz-{pattern}"))
         if flavour is None or _flavour(r) == flavour),
        key=_release_key,
    )
    if not found:
        raise VMError(
            f"no kernel matching {name!r} in /boot; install it with scripts/setup "
            "(linux-image-amd64 / linux-image-6.12-amd64 / linux-image-rt-amd64)"
        )
    return found[-1]


def _release_key(release: str) -> list:
    """Newest last: compare the numbers in the release as numbers (6.1.0-57 > 6.1.0-9)."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", release)]


def kvm_usable() -> bool:
    """True when KVM can really boot a kernel (on these machines it cannot)."""
    if os.environ.get("IPVTRACE_VM_ACCEL") in ("tcg", "kvm"):
        return os.environ["IPVTRACE_VM_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    kernel = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernel:
        return False
    # Boot with no root: a working KVM reaches the "VFS: Unable to mount root"
    # panic in a second or two; a broken one aborts or hangs.
    cmd = [
        "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-kernel", kernel[-1], "-append", "console=ttyS0 panic=-1",
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except subprocess.TimeoutExpired:
        return False
    return "Kernel panic" in out


def run(
    kernel: str,
    script: str,
    work_dir: Path,
    *,
    cpus: int = 2,
    memory_mb: int = 2048,
    timeout: float = 1800,
    accel: str | None = None,
    cache_dir: Path | None = None,
    keep: Path | None = None,
    extra_args: list[str] | None = None,
) -> VMResult:
    """Boot *kernel*, run *script* (sh) with cwd *work_dir*, return its rc and log.

    *keep* (default: this repository) stays visible in the guest even when it
    lives under a directory the guest mounts a tmpfs on (/tmp, /root, ...).
    *extra_args* go to QEMU as they are (a NIC: two guests joined by a wire).
    """
    kver = resolve_kernel(kernel)
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    for name in ("guest.rc", "guest.log", "console.log"):
        (work_dir / name).unlink(missing_ok=True)
    (work_dir / "guest.sh").write_text(script)
    cache_dir = cache_dir or Path(os.environ.get("IPVTRACE_CACHE", "/var/cache/ipvtrace"))
    try:
        initrd = initramfs.build(kver, cache_dir)
    except RuntimeError as exc:
        raise VMError(str(exc)) from None
    if shutil.which("qemu-system-x86_64") is None:
        raise VMError("qemu-system-x86_64 missing: apt-get install qemu-system-x86")
    if accel is None:
        accel = "kvm" if kvm_usable() else "tcg"
    cpu = "host" if accel == "kvm" else "max"
    keep = keep or Path(__file__).resolve().parents[3]
    append = f"console=ttyS0 panic=-1 loglevel=4 ipvt.out={work_dir} ipvt.keep={keep}"
    if len(append) > 1500:
        raise VMError("work dir path too long for the kernel command line")
    cmd = [
        "qemu-system-x86_64", "-accel", accel, "-cpu", cpu,
        "-smp", str(cpus), "-m", str(memory_mb),
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{work_dir / 'console.log'}",
        "-kernel", f"/boot/vmlinuz-{kver}", "-initrd", str(initrd),
        "-append", append,
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
        "-fsdev", f"local,id=out,path={work_dir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=out,mount_tag=ipvtout",
        # no NIC unless asked for: QEMU's default one would reach outside by NAT
        "-nic", "none", *(extra_args or []),
    ]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise VMError(f"{kver}: guest did not finish within {timeout:.0f} s") from exc
    seconds = time.monotonic() - start
    console = _read(work_dir / "console.log")
    rc_text = _read(work_dir / "guest.rc").strip()
    if proc.returncode != 0 or not re.fullmatch(r"\d+", rc_text):
        tail = "\n".join(console.splitlines()[-15:])
        raise VMError(
            f"{kver}: guest did not report an exit code (qemu rc={proc.returncode}, "
            f"{proc.stderr.strip()[:300]!r}); console tail:\n{tail}\n"
            f"command: {shlex.join(cmd)}"
        )
    return VMResult(
        kernel=kver, rc=int(rc_text), log=_read(work_dir / "guest.log"),
        console=console, seconds=seconds, accel=accel,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
