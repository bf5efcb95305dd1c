"""What registry tooling reads from the pack's files without running them (comfy-test 0.4's `lint` and
`coverage`, the installation tests many packs run), checked here with the same rules:

* `lint`'s unicode check: every character of every .py file (comments and docstrings included) must
  encode in Windows' cp1252 (outside dot-folders, `venv`, `node_modules`, `site-packages`, `lib`).
* `coverage`: the registered nodes are the string keys of every literal ``NODE_CLASS_MAPPINGS`` dict
  (assigned, annotated, ``.update({...})`` or subscript-assigned) in any .py outside `web`, `docs`,
  `workflows`, `assets`, `node_modules`, venvs and dot-folders. They must be exactly the pack's nodes
  (the schema ids of `nodes/`): no test-only node counted as the pack's, no V3 node missed.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_SKIP = {"__pycache__", "venv", "node_modules", "site-packages", "lib", "Lib"}
COVERAGE_SKIP = {"__pycache__", "node_modules", "web", "assets", "docs", "workflows", "_env", "venv"}


def python_files(skip):
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def test_every_python_file_is_cp1252():
    bad = []
    for path in python_files(LINT_SKIP):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                for ch in line:
                    try:
                        ch.encode("cp1252")
                    except UnicodeEncodeError:
                        bad.append(f"{os.path.relpath(path, ROOT)}:{n}: {ch!r}")
    assert not bad, "\n".join(bad[:40])


def _is_mapping(target) -> bool:
    return (isinstance(target, ast.Name) and target.id == "NODE_CLASS_MAPPINGS") or \
        (isinstance(target, ast.Attribute) and target.attr == "NODE_CLASS_MAPPINGS")


def statically_registered() -> dict[str, str]:
    """node id -> file, by coverage's rules."""
    found = {}
    for path in python_files(COVERAGE_SKIP):
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=rel)
        for node in ast.walk(tree):
            dicts = []
            if isinstance(node, ast.Assign):
                if any(_is_mapping(t) for t in node.targets) and isinstance(node.value, ast.Dict):
                    dicts.append(node.value)
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and _is_mapping(t.value) and isinstance(t.slice, ast.Constant):
                        found[t.slice.value] = rel
            elif isinstance(node, ast.AnnAssign) and _is_mapping(node.target) and isinstance(node.value, ast.Dict):
                dicts.append(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                  and _is_mapping(node.func.value)):
                dicts += [a for a in node.args if isinstance(a, ast.Dict)]
            for d in dicts:
                for k in d.keys:
                    if isinstance(k, ast.Constant) and isinstance(k.value, str):
                        found[k.value] = rel
    return found


def schema_ids() -> set[str]:
    """The node_id of every io.Schema(...) in nodes/ (a literal, or a module-level string constant)."""
    ids = set()
    for name in os.listdir(os.path.join(ROOT, "nodes")):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, "nodes", name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Schema":
                for kw in node.keywords:
                    if kw.arg == "node_id":
                        v = kw.value
                        ids.add(v.value if isinstance(v, ast.Constant) else consts[v.id])
    return ids


def test_registry_tooling_sees_exactly_the_packs_nodes():
    registered = statically_registered()
    pack = schema_ids()
    assert len(pack) >= 13, sorted(pack)
    assert set(registered) == pack, {
        "counted but not the pack's": {k: v for k, v in registered.items() if k not in pack},
        "the pack's but not counted": sorted(pack - set(registered))}
    assert set(registered.values()) == {os.path.join("nodes", "__init__.py")}, set(registered.values())
