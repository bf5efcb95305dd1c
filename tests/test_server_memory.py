"""benchmarks/server_memory.py: the process-memory reader of the soak test and the benchmarks."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import server_memory  # noqa: E402

pytestmark = pytest.mark.skipif(not server_memory.available(), reason="no /proc/<pid>/status (not Linux)")


def test_read_follows_an_allocation_and_the_peak_resets():
    pid = os.getpid()
    before = server_memory.read(pid)
    block = bytearray(64 * 2 ** 20)  # 64 MiB, zero-filled: every page touched
    during = server_memory.read(pid)
    assert during["VmRSS"] - before["VmRSS"] >= 60, (before, during)
    # the kernel updates the counters in batches (per-thread RSS deltas, 64 faults at a time): 1 MiB slack
    assert during["VmHWM"] >= during["VmRSS"] - 1
    del block
    after = server_memory.read(pid)
    assert after["VmRSS"] <= during["VmRSS"] - 60   # a block this size is mmap'd: freed at once
    assert after["VmHWM"] >= during["VmRSS"] - 1     # the peak remembers it ...
    if server_memory.reset_peak(pid):                 # ... until reset to the current size
        reset = server_memory.read(pid)
        assert reset["VmHWM"] < during["VmRSS"] - 60 and reset["VmHWM"] >= reset["VmRSS"] - 1


def test_read_of_a_process_that_is_gone():
    with pytest.raises(OSError):
        server_memory.read(2 ** 22 + 1)  # above the kernel's pid_max (4194304)


def test_slope_hand_worked():
    assert server_memory.slope([1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert server_memory.slope([10.0, 10.0, 10.0, 10.0]) == 0.0
    assert server_memory.slope([0.0, 13.0, 0.0]) == pytest.approx(0.0)  # a transient bump is no trend
    assert server_memory.slope([4.0, 0.0, 1.0, 3.0]) == pytest.approx(-0.2)  # sxy = -1, sxx = 5
    assert server_memory.slope([7.0]) == 0.0 and server_memory.slope([]) == 0.0
