"""bpfsys.load_tracing tries a load again when the verifier was interrupted
(EAGAIN: a signal pending, e.g. a profiler's ptrace stop), as libbpf does,
and gives any other refusal, or the last EAGAIN, with the verifier's log."""
import errno

import pytest

from ipvtrace.capture import bpfsys


def refusing(monkeypatch, errors: list[int]) -> list[int]:
    """bpf(2) stand-in for BPF_PROG_LOAD: fails with *errors* in turn, then
    returns fd 42. Returns the log levels it was called with."""
    calls: list[int] = []

    def fake(cmd, attr):
        assert cmd == bpfsys.BPF_PROG_LOAD
        calls.append(attr.log_level)
        if errors:
            raise OSError(errors.pop(0), "bpf(5) failed")
        return 42

    monkeypatch.setattr(bpfsys, "_bpf", fake)
    return calls


def load() -> int:
    return bpfsys.load_tracing(b"\0" * 16, "on_xmit_done", True, 1, 3)


def test_an_interrupted_load_is_tried_again(monkeypatch):
    calls = refusing(monkeypatch, [errno.EAGAIN] * (bpfsys.PROG_LOAD_ATTEMPTS - 1))
    assert load() == 42
    assert calls == [0] * bpfsys.PROG_LOAD_ATTEMPTS   # no log asked for: it was not refused


def test_a_refusal_is_not_tried_again_and_comes_with_the_log(monkeypatch):
    calls = refusing(monkeypatch, [errno.EACCES, errno.EACCES])
    with pytest.raises(OSError) as e:
        load()
    assert e.value.errno == errno.EACCES and "loading on_xmit_done" in str(e.value)
    assert calls == [0, 1]


def test_interrupted_every_time_gives_up(monkeypatch):
    n = bpfsys.PROG_LOAD_ATTEMPTS
    calls = refusing(monkeypatch, [errno.EAGAIN] * (2 * n))
    with pytest.raises(OSError) as e:
        load()
    assert e.value.errno == errno.EAGAIN
    assert calls == [0] * n + [1] * n
