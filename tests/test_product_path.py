"""Nothing measuring on the product path: the shipped code (nodes/, fastdrag_core/) installs no
saved-tensor hooks (a hook that hands back the tensor it was given ties each saved tensor to its own
autograd node in a cycle the garbage collector cannot see: the old drag-loop memory meter kept every
run's graph alive this way) and neither resets nor reads the process-wide CUDA peak-memory counters.
Memory is measured by the benchmarks (benchmarks/bench_dd_memory.py, bench_lora.py)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURING = {"saved_tensors_hooks", "save_on_cpu", "register_saved_tensors_default_hooks", "reset_peak_memory_stats",
             "max_memory_allocated", "max_memory_reserved", "memory_stats"}


def shipped_files():
    for folder in ("nodes", "fastdrag_core"):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


@pytest.mark.parametrize("path", list(shipped_files()))
def test_no_memory_measurement_on_the_product_path(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    used = sorted({(n.attr if isinstance(n, ast.Attribute) else n.id, n.lineno) for n in ast.walk(tree)
                   if (isinstance(n, ast.Attribute) and n.attr in MEASURING)
                   or (isinstance(n, ast.Name) and n.id in MEASURING)})
    assert not used, f"{path}: measuring calls on the product path: {used}"
