"""pytest configuration shared by all tests.

The repository root is a ComfyUI node pack: its ``__init__.py`` and ``nodes/`` import ComfyUI and
must never be imported by test collection. Unit tests import only ``fastdrag_core`` (pure PyTorch),
so the root is put on ``sys.path`` for that, and collection is kept out of the root package.
``tests/`` deliberately has no ``__init__.py``: with one, pytest would walk up into the root
package and import the root ``__init__``.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Never collect ComfyUI glue or the node pack's entry point, even when pytest is pointed at the root.
collect_ignore_glob = [os.path.join(ROOT, "__init__.py"), os.path.join(ROOT, "nodes", "*"),
                       os.path.join(ROOT, "tests", "integration", "fastdrag_testpack", "*")]
