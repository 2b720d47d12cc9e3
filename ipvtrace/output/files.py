"""Files ipvtrace writes hold addresses, captured headers and namespace names:
they are created readable by their owner only (0600), whatever the umask."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600


def private_open(path: Path, buffering: int = -1) -> BinaryIO:
    """Create (or truncate) *path* for writing, mode 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)   # an existing file keeps its mode through O_TRUNC
        return os.fdopen(fd, "wb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def write_private_atomic(path: Path, data: bytes) -> None:
    """Replace *path* with *data* by rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with private_open(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
