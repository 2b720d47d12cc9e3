"""Which installed kernel a VM alias boots (no VM is booted here): Debian
ships each version as a generic, a PREEMPT_RT (-rt-) and a cloud (-cloud-)
build, and one glob (6.12.*-amd64) matches all three."""
import fnmatch

import pytest

from ipvtrace.lab.vm import qemu

BOOT = ["/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-57-amd64",
        "/boot/vmlinuz-6.1.0-57-cloud-amd64", "/boot/vmlinuz-6.1.0-57-rt-amd64",
        "/boot/vmlinuz-6.12.117+deb12-amd64", "/boot/vmlinuz-6.12.117+deb12-cloud-amd64",
        "/boot/vmlinuz-6.12.117+deb12-rt-amd64"]


def installed(monkeypatch, paths: list[str]) -> None:
    monkeypatch.setattr(qemu.glob, "glob", lambda pattern: fnmatch.filter(paths, pattern))


@pytest.fixture
def boot(monkeypatch):
    installed(monkeypatch, BOOT)


@pytest.mark.parametrize("alias, release", [
    ("6.1", "6.1.0-57-amd64"),                 # the newest ABI, not -9 (numbers compare as numbers)
    ("6.12", "6.12.117+deb12-amd64"),          # the cloud build sorts after it, and has no 9p
    ("6.1-rt", "6.1.0-57-rt-amd64"),
    ("6.12-rt", "6.12.117+deb12-rt-amd64"),
    ("6.12.117+deb12-cloud-amd64", "6.12.117+deb12-cloud-amd64"),   # a release is taken as given
])
def test_alias_boots_its_flavour(boot, alias, release):
    assert qemu.resolve_kernel(alias) == release


def test_an_alias_with_no_build_of_its_flavour_says_how_to_install_one(monkeypatch):
    installed(monkeypatch, [p for p in BOOT if "-rt-" not in p])
    with pytest.raises(qemu.VMError, match="install it"):
        qemu.resolve_kernel("6.12-rt")
