"""Memory of a running process (a ComfyUI server) read from ``/proc/<pid>/status``, and the
growth of a series of readings. Measuring code for the soak tests and the benchmarks: stdlib only,
never imported by the pack's nodes.

* :func:`read` gives ``VmRSS`` (resident now) and ``VmHWM`` (resident peak) in MiB.
* :func:`reset_peak` sets ``VmHWM`` back to the current ``VmRSS`` (``/proc/<pid>/clear_refs``), so
  the next reading's peak is that of the work in between (one run), not of the process's history.
* :func:`slope` is the least-squares growth per run of a series of readings (MiB per run): a
  leak that keeps a fixed amount per run shows as that slope, while allocator noise (a few MiB up
  or down between runs) averages out.

Linux only (``/proc``); :func:`available` says whether it can read anything here.
"""

from __future__ import annotations

import os

FIELDS = ("VmRSS", "VmHWM")


def available(pid: int | None = None) -> bool:
    """Whether ``/proc/<pid>/status`` (default this process) can be read."""
    return os.path.exists(f"/proc/{pid or os.getpid()}/status")


def read(pid: int) -> dict[str, float]:
    """``{"VmRSS": MiB, "VmHWM": MiB}`` of process ``pid`` (raises OSError when it has gone)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                number, unit = value.split()
                assert unit == "kB", line
                out[key] = int(number) / 1024.0
    missing = [k for k in FIELDS if k not in out]
    if missing:
        raise OSError(f"/proc/{pid}/status has no {', '.join(missing)}")
    return out


def reset_peak(pid: int) -> bool:
    """Resets the peak (``VmHWM``) of ``pid`` to its current resident size (writes ``5`` to
    ``/proc/<pid>/clear_refs``, Linux >= 4.0, same user). False when the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def slope(values) -> float:
    """Least-squares slope of ``values`` against their index 0, 1, ... (units per step); 0 for one value."""
    n = len(values)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2.0
    my = sum(values) / n
    sxy = sum((i - mx) * (v - my) for i, v in enumerate(values))
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sxy / sxx
