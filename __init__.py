"""ComfyUI entry point of the FastDrag node pack (V3 node API).

Importing this file needs nothing but Python (pytest may import it while collecting the root
``conftest.py``); everything that needs ComfyUI is imported in :func:`comfy_entrypoint`, which
ComfyUI calls while loading custom nodes, before its server adds the routes. Only
``WEB_DIRECTORY`` and ``comfy_entrypoint`` are exported: a ``NODE_CLASS_MAPPINGS`` here would make
ComfyUI ignore the entry point.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Called by ComfyUI (nodes.py load_custom_node) to get the extension object."""
    from server import PromptServer

    from .nodes import FastDragExtension, preview_route
    from .nodes.version_check import check_comfyui_version, check_template_folder

    check_comfyui_version()
    check_template_folder(__path__[0])
    # POST /fastdrag/preview, GET /fastdrag/image (the points editor); the cache belongs to the routes
    preview_route.register_routes(PromptServer.instance.routes)
    return FastDragExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
