"""UI-format workflow (what ComfyUI saves and the template browser opens) -> API prompt, for tests that
run a shipped workflow in the real server.

Follows the front end's ``graphToPrompt`` for the node kinds the shipped workflows use: links become
``[node_id, slot]``; widget values are taken in the order of the node's widget inputs (``/object_info``
``input_order``: required, then optional); a linked widget takes the link; an ``image_upload`` combo
(LoadImage) is followed by the front end's upload button value; seed-like INTs with
``control_after_generate`` by the control value. Nodes unknown to the server (Note, Reroute, ...) and
muted / bypassed nodes are left out.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {l[0]: (l[1], l[2]) for l in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info.get(node["type"])
        if info is None or node.get("mode", 0) in (2, 4):
            continue
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", []))
        inputs = {}
        for name in names:
            spec = specs[name]
            if _is_widget(spec):
                value = values.pop(0) if values else None
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if opts.get("image_upload") and values:
                    values.pop(0)  # the upload button's value
                if (opts.get("control_after_generate") or name in ("seed", "noise_seed")) and values \
                        and values[0] in ("fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
                if name in linked:
                    src, slot = linked[name]
                    inputs[name] = [str(src), slot]
                elif value is not None:
                    inputs[name] = value
            elif name in linked:
                src, slot = linked[name]
                inputs[name] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
