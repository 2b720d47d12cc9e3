"""Build a tiny busybox initramfs that mounts the host's root over 9p.

The guest runs the host's own userland (Python, bcc, iproute2) read-only, so a
kernel can be tested without building a disk image: only the modules needed to
reach the 9p share are copied into the initramfs, for the exact kernel booted.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
# What the guest needs before the host root is reachable: virtio-pci (a module
# on 6.1, built in on 6.12) and the 9p filesystem over virtio.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "/mods/$m" 2>/dev/null; done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /newroot || {
  echo "ipvtrace-vm: cannot mount the host root over 9p" ; poweroff -f; }
OUT=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^ipvt.out=//p')
KEEP=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^ipvt.keep=//p')
# The writable tmpfs mounts below may hide the repository (a clone under /tmp):
# keep a handle on it and put it back afterwards.
if [ -n "$KEEP" ]; then mkdir -p /keep && mount --bind "/newroot$KEEP" /keep; fi
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mount -t tmpfs tmpfs /newroot/var/tmp
mount -t tmpfs tmpfs /newroot/root
mount -t tmpfs tmpfs /newroot/mnt
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
if [ -n "$KEEP" ]; then mkdir -p "/newroot$KEEP" 2>/dev/null; mount --bind /keep "/newroot$KEEP"; fi
mkdir -p "/newroot$OUT" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 ipvtout "/newroot$OUT" || {
  echo "ipvtrace-vm: cannot mount the output share" ; poweroff -f; }
echo "ipvtrace-vm: guest up, running $OUT/guest.sh"
chroot /newroot /bin/sh -c "cd '$OUT' && exec /bin/sh '$OUT/guest.sh'" > "/newroot$OUT/guest.log" 2>&1
echo $? > "/newroot$OUT/guest.rc"
sync
echo "ipvtrace-vm: guest done rc=$(cat /newroot$OUT/guest.rc)"
poweroff -f
"""


MODPROBE_SHIM = """#!/bin/busybox sh
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
"""


def module_paths(kver: str) -> list[Path]:
    """The .ko files (in load order, deduplicated) that BOOT_MODULES need."""
    seen: list[Path] = []
    for mod in BOOT_MODULES:
        got = subprocess.run(
            ["modprobe", "-S", kver, "--show-depends", mod], capture_output=True, text=True,
        )
        if got.returncode != 0:
            # Debian's -cloud- builds have no 9p: the guest could not reach this root
            raise RuntimeError(
                f"kernel {kver} has no module {mod} (nor built in): the VM runner shares "
                f"this machine's root with the guest over virtio 9p; use a kernel with "
                f"CONFIG_NET_9P_VIRTIO and CONFIG_9P_FS ({got.stderr.strip()})")
        out = got.stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in seen:
                    seen.append(path)
    return seen


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        raise RuntimeError(f"zstd-compressed modules are not supported: {path}")
    return data


def build(kver: str, cache_dir: Path) -> Path:
    """Return a gzip'd newc cpio initramfs for kernel *kver*, cached by content."""
    mods = module_paths(kver)
    key = hashlib.sha256(
        (INIT_SCRIPT + MODPROBE_SHIM + kver + "".join(str(m) for m in mods)).encode()
    ).hexdigest()[:12]
    out = cache_dir / f"initramfs-{kver}-{key}.cpio.gz"
    if out.exists():
        return out
    if not BUSYBOX.exists() or shutil.which("cpio") is None:
        raise RuntimeError("need busybox-static and cpio: apt-get install busybox-static cpio")
    cache_dir.mkdir(parents=True, exist_ok=True)
    stage = cache_dir / f"stage-{kver}"
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "sbin", "proc", "sys", "dev", "mods", "newroot"):
        (stage / d).mkdir(parents=True)
    # The kernel's module autoloader runs /sbin/modprobe in the initramfs'
    # root, not in the chroot: hand the request to the host's modprobe.
    (stage / "sbin" / "modprobe").write_text(MODPROBE_SHIM)
    os.chmod(stage / "sbin" / "modprobe", 0o755)
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    names = []
    for m in mods:
        name = m.name.removesuffix(".xz")
        (stage / "mods" / name).write_bytes(_read_module(m))
        names.append(name)
    (stage / "modules.list").write_text("\n".join(names) + "\n")
    (stage / "init").write_text(INIT_SCRIPT)
    os.chmod(stage / "init", 0o755)
    files = subprocess.run(
        ["find", "."], cwd=stage, check=True, capture_output=True, text=True
    ).stdout
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=files.encode(),
        check=True, capture_output=True,
    ).stdout
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=1) as f:
        f.write(cpio)
    tmp.rename(out)
    shutil.rmtree(stage, ignore_errors=True)
    return out
