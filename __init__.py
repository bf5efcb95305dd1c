"""ComfyUI entry point of the FastDrag node pack (V3 node API).

ComfyUI imports this file as a package; pytest never does (the root ``conftest.py`` keeps the repo
root out of collection, and nothing here is needed by the unit tests). Only ``WEB_DIRECTORY`` and
``comfy_entrypoint`` are exported: a ``NODE_CLASS_MAPPINGS`` here would make ComfyUI ignore the
entry point.
"""

WEB_DIRECTORY = "./web"

# --- HTTP routes -------------------------------------------------------------------------------
# Route modules register themselves on import (PromptServer.instance.routes); add them here.
# (nodes/preview_route.py belongs to the web front end.)
if __package__:  # ComfyUI imports this file as a package; pytest's collection may import it bare
    from .nodes import preview_route  # noqa: E402,F401  POST /fastdrag/preview (points editor's warp preview)
# -----------------------------------------------------------------------------------------------


async def comfy_entrypoint():
    """Called by ComfyUI (nodes.py load_custom_node) to get the extension object."""
    from .nodes import FastDragExtension

    return FastDragExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
