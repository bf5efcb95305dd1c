"""The oldest ComfyUI this pack supports, checked once at load time with one clear log line.

ComfyUI writes its version to ``comfyui_version.py`` (``__version__``) at its root, which is on
``sys.path`` while custom nodes load. The same minimum is declared for the registry in
``pyproject.toml`` (``[tool.comfy] requires-comfyui``); a unit test keeps the two equal. This module
imports nothing from ComfyUI at import time (the unit test loads it on its own).
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# The pack uses the V3 node API (comfy_api.latest: io.Custom sockets, hidden inputs, node expansion
# from V3 nodes, comfy_entrypoint) and ComfyUI's sampler internals as they are in v0.8.0, the
# version it is tested against; older releases changed those APIs.
MIN_COMFYUI = (0, 8, 0)


def parse_version(text) -> tuple[int, ...] | None:
    """'0.8.0' -> (0, 8, 0); leading numeric parts only ('0.9.1rc2' -> (0, 9, 1)); None if none."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text or ""))
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def version_message(found) -> tuple[int, str]:
    """(logging level, message) for ComfyUI version string ``found`` (None = unknown)."""
    need = ".".join(map(str, MIN_COMFYUI))
    v = parse_version(found)
    if v is None:
        return logging.WARNING, (f"[FastDrag] could not read ComfyUI's version (comfyui_version.py); this pack "
                                 f"needs ComfyUI >= {need}")
    if v + (0,) * (3 - len(v)) < MIN_COMFYUI:
        return logging.ERROR, (f"[FastDrag] ComfyUI {found} is older than {need}, the oldest version this pack "
                               f"supports: its nodes may fail to load or run. Update ComfyUI (git pull in the "
                               f"ComfyUI folder, or ComfyUI-Manager's 'Update ComfyUI') and restart.")
    return logging.INFO, f"[FastDrag] ComfyUI {found} (this pack needs >= {need})"


def check_comfyui_version() -> bool:
    """Log ComfyUI's version against :data:`MIN_COMFYUI`; True when it is recent enough."""
    try:
        import comfyui_version
        found = getattr(comfyui_version, "__version__", None)
    except ImportError:
        found = None
    level, message = version_message(found)
    log.log(level, message)
    return level == logging.INFO


# ComfyUI (app/custom_node_manager.py) serves the first of these folders a pack has as its templates
SHADOWING_TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow")


def check_template_folder(pack_dir: str) -> None:
    """Warn when a folder ComfyUI looks at before ``workflows/`` (an ``example_workflows/`` from a copy
    older than 0.2, or ``example/``, ``examples/``, ``workflow/``) sits beside it: ComfyUI then serves
    that one as the pack's template folder and the shipped templates 404."""
    import os

    if not os.path.isdir(os.path.join(pack_dir, "workflows")):
        return
    for name in SHADOWING_TEMPLATE_FOLDERS:
        old = os.path.join(pack_dir, name)
        if os.path.isdir(old):
            log.warning("[FastDrag] %s hides workflows/: ComfyUI serves it as this pack's templates instead, so "
                        "the shipped templates are missing (%s is left from an older version of the pack or "
                        "was added by hand); delete or rename that folder and restart.", old, name)
