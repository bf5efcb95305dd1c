"""pytest: make `fastdrag_core` and `tests` importable from the repo root; never import the pack's
root `__init__.py` (it needs ComfyUI)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
collect_ignore = ["__init__.py"]
