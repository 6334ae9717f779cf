"""attnorm.training.allocator: glibc keeps freed memory for training processes."""

import subprocess
import sys
import textwrap

import pytest

from attnorm.training import allocator


class _FakeLibc:
    """Stands in for glibc: records mallopt calls and answers ``result``."""

    def __init__(self, result: int) -> None:
        self.calls, self.result = [], result

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


def test_sets_both_glibc_thresholds(monkeypatch):
    fake = _FakeLibc(1)
    monkeypatch.setattr(allocator, "_libc", lambda: fake)
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.retain_freed_memory() is True
    # glibc's M_MMAP_THRESHOLD (-3) at its 64-bit maximum and M_TRIM_THRESHOLD (-1) at 2 GiB
    assert fake.calls == [(-3, 32 * 1024 * 1024), (-1, 2 ** 31 - 1)]
    assert allocator.retain_freed_memory() is True and len(fake.calls) == 2  # once per process


def test_a_refused_setting_reports_false(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", lambda: _FakeLibc(0))
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.retain_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_stay_mapped_on_glibc():
    # A 4 MiB block is above glibc's default mmap threshold, so it is unmapped at free and the
    # resident size drops; after retain_freed_memory() it comes from the heap and stays resident.
    code = textwrap.dedent("""
        import ctypes, sys
        from attnorm.training.allocator import retain_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        if sys.argv[1] == "retain":
            assert retain_freed_memory()
        p = libc.malloc(64 << 20 >> 4)
        ctypes.memset(p, 1, 64 << 20 >> 4)
        before = rss(); libc.free(p); after = rss()
        print(before - after)
    """)
    dropped = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("default", "retain")}
    assert dropped["default"] >= 3 << 20  # the 4 MiB block went back to the kernel
    assert dropped["retain"] < 1 << 20  # kept


def test_retain_freed_memory_on_sets_glibc_only_for_the_cpu(monkeypatch):
    import torch
    fake = _FakeLibc(1)
    monkeypatch.setattr(allocator, "_libc", lambda: fake)
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.retain_freed_memory_on("cuda:0") is False
    assert allocator.retain_freed_memory_on(torch.device("meta")) is False
    assert fake.calls == []
    assert allocator.retain_freed_memory_on(torch.device("cpu")) is True and len(fake.calls) == 2
