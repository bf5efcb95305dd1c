"""API-format ComfyUI workflows with marked inputs, as used by ``dragbench.py`` and ``drag_edit.py``.

A marked workflow is a normal API-format workflow (ComfyUI: *Export (API)*) in which some input
values are placeholders ``{{name}}``. A value that is exactly ``"{{name}}"`` is replaced by the
value itself (a number stays a number); a placeholder inside a longer string is replaced by its
text. The marks the clients fill:

=================  =====================================================================
``{{image}}``      the uploaded source image, for ``LoadImage.image`` (required)
``{{output}}``     the ``filename_prefix`` of the ``SaveImage`` that saves the result (required)
``{{points}}``     the drags as the pack's points JSON, in source pixels
``{{mask}}``       the uploaded mask PNG (white = editable; all white when there is none), for
                   ``LoadImageMask.image`` with ``channel`` ``red``
``{{prompt}}``     the prompt text
``{{checkpoint}}`` the ``--checkpoint`` name
any other          a setting: from the workflow's ``_marks.defaults`` or ``--set name=value``
=================  =====================================================================

A top-level ``"_marks"`` entry (``{"description": str, "defaults": {name: value}}``) is optional
and removed before the prompt is sent. ``benchmarks/workflows/*.json`` are the shipped examples.
"""

from __future__ import annotations

import copy
import json
import re

MARK = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
REQUIRED = ("image", "output")


class WorkflowError(ValueError):
    pass


def load_workflow(path: str) -> tuple[dict, dict, str]:
    """(prompt without ``_marks``, defaults, description) of a marked workflow file."""
    try:
        with open(path) as f:
            wf = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkflowError(f"{path}: cannot read the workflow ({e})") from None
    if not isinstance(wf, dict) or "nodes" in wf:
        raise WorkflowError(f"{path}: not an API-format workflow (export it with 'Export (API)': a dict of "
                            "node id -> {class_type, inputs})")
    marks = wf.pop("_marks", {}) or {}
    for nid, node in wf.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"{path}: node {nid!r} is not {{'class_type', 'inputs'}}")
    names = placeholders(wf)
    missing = [m for m in REQUIRED if m not in names]
    if missing:
        raise WorkflowError(f"{path}: no {', '.join('{{' + m + '}}' for m in missing)} mark; mark the LoadImage "
                            "input with \"{{image}}\" and the SaveImage filename_prefix with \"{{output}}\"")
    return wf, dict(marks.get("defaults", {})), str(marks.get("description", ""))


def placeholders(prompt: dict) -> set[str]:
    """Every ``{{name}}`` used in the prompt's input values."""
    found = set()
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, str):
                found.update(MARK.findall(value))
    return found


def class_types(prompt: dict) -> set[str]:
    return {node["class_type"] for node in prompt.values()}


def output_node(prompt: dict) -> str:
    """The id of the node with an input exactly ``{{output}}``."""
    ids = [nid for nid, node in prompt.items() if "{{output}}" in node.get("inputs", {}).values()]
    if len(ids) != 1:
        raise WorkflowError(f"the workflow needs exactly one node with an input \"{{{{output}}}}\" (the SaveImage "
                            f"filename_prefix of the result), found {len(ids)}")
    return ids[0]


def fill(prompt: dict, values: dict) -> dict:
    """A copy of ``prompt`` with every mark replaced; WorkflowError names the marks without a value."""
    missing = sorted(placeholders(prompt) - set(values))
    if missing:
        raise WorkflowError(f"no value for {', '.join('{{' + m + '}}' for m in missing)}; give it with "
                            f"--set {missing[0]}=VALUE or in the workflow's _marks.defaults")
    out = copy.deepcopy(prompt)
    for node in out.values():
        for key, value in node["inputs"].items():
            if not isinstance(value, str):
                continue
            whole = MARK.fullmatch(value)
            if whole:
                node["inputs"][key] = values[whole.group(1)]
            else:
                node["inputs"][key] = MARK.sub(lambda m: str(values[m.group(1)]), value)
    return out


def parse_set(items) -> dict:
    """``["steps=20", "cfg=1.5", "name=text"]`` -> values (JSON where it parses, else the text)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise WorkflowError(f"--set {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def run_edit(client, prompt: dict, values: dict, timeout: float = 3600) -> tuple[bytes, float, dict]:
    """Fill and run a marked workflow; returns (PNG bytes of the result, server seconds, history entry)."""
    node = output_node(prompt)
    entry = client.run(fill(prompt, values), timeout=timeout)
    images = client.images(entry, node)
    if not images:
        raise WorkflowError(f"the output node {node} ({prompt[node]['class_type']}) sent no image")
    img = images[0]
    return client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output")), \
        client.exec_seconds(entry), entry
