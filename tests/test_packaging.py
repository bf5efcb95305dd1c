"""Packaging facts that must stay true: the minimum ComfyUI version (declared for the registry and
checked at load time), and the templates in workflows/ (each with a thumbnail and a description)."""

import importlib.util
import logging
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _version_check():
    spec = importlib.util.spec_from_file_location("fastdrag_version_check",
                                                  os.path.join(ROOT, "nodes", "version_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_min_comfyui_declared_equals_checked():
    vc = _version_check()
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(r'^requires-comfyui = ">=([0-9.]+)"$', text, re.M)
    assert m, "pyproject.toml [tool.comfy] requires-comfyui missing"
    assert vc.parse_version(m.group(1)) == vc.MIN_COMFYUI


def test_version_messages():
    vc = _version_check()
    assert vc.parse_version("0.8.0") == (0, 8, 0) and vc.parse_version("v1.2") == (1, 2)
    assert vc.parse_version("0.10.3rc1") == (0, 10, 3) and vc.parse_version("unknown") is None
    level, msg = vc.version_message("0.7.9")
    assert level == logging.ERROR and "0.7.9 is older than 0.8.0" in msg and "Update ComfyUI" in msg
    assert vc.version_message("0.8.0")[0] == logging.INFO
    assert vc.version_message("0.10")[0] == logging.INFO  # 0.10 > 0.8 (numbers, not text)
    assert vc.version_message("1")[0] == logging.INFO
    assert vc.version_message(None)[0] == logging.WARNING


def test_a_folder_comfyui_serves_before_workflows_is_warned_about(tmp_path, caplog):
    """ComfyUI v0.8.0 (app/custom_node_manager.py) looks for example_workflows, example, examples,
    workflow, then workflows; any of the first four beside workflows/ hides the shipped templates."""
    vc = _version_check()
    (tmp_path / "workflows").mkdir()
    with caplog.at_level(logging.WARNING):
        vc.check_template_folder(str(tmp_path))
    assert not caplog.records
    for name in ("example_workflows", "example", "examples", "workflow"):
        caplog.clear()
        (tmp_path / name).mkdir()
        with caplog.at_level(logging.WARNING):
            vc.check_template_folder(str(tmp_path))
        assert len(caplog.records) == 1 and f"{name} hides workflows/" in caplog.text, caplog.text
        (tmp_path / name).rmdir()


def test_no_placeholder_repository_url():
    for name in ("pyproject.toml", "README.md"):
        text = open(os.path.join(ROOT, name)).read()
        assert "<this repository>" not in text and "github.com/comfyui-fastdrag" not in text, name


WORKFLOWS = os.path.join(ROOT, "workflows")


def test_every_template_has_a_thumbnail_and_a_descriptive_name():
    """ComfyUI's template browser (front end 1.35.9) lists a pack's workflows/<name>.json with
    <name> as the title, <name> with '_' and '-' turned into spaces as the description, and
    workflows/<name>.jpg as the thumbnail (a missing one is a 404 in the console). So each template
    needs a .jpg beside it (written by FASTDRAG_WRITE_THUMBNAILS=1 ... pytest tests/browser) and a
    name that reads as a description: a few words separated by spaces, no '_' or '-'."""
    names = sorted(f[:-5] for f in os.listdir(WORKFLOWS) if f.endswith(".json"))
    assert names, "no templates in workflows/"
    for name in names:
        jpg = os.path.join(WORKFLOWS, name + ".jpg")
        assert os.path.isfile(jpg), f"workflows/{name}.jpg (thumbnail) is missing"
        with open(jpg, "rb") as f:
            assert f.read(3) == b"\xff\xd8\xff", f"workflows/{name}.jpg is not a JPEG"
        assert "_" not in name and "-" not in name, f"{name!r}: the template browser shows '_'/'-' as spaces"
        assert len(name.split()) >= 3 and len(name) <= 48, f"{name!r}: 3+ words, at most 48 characters"


def test_js_drag_cap_equals_the_core_cap():
    from fastdrag_core.points import MAX_DRAGS

    js = open(os.path.join(ROOT, "web", "js", "fastdrag_points_model.js")).read()
    assert f"export const MAX_DRAGS = {MAX_DRAGS};" in js


def test_readme_is_the_front_door():
    """The README stays a front door: at most 300 lines, the two set-up commands, the main job and the
    test command that .ci/run runs, links to docs/ and CONTRIBUTING.md that exist, and no word of the
    environment the pack happens to be developed in (its package index, a sibling folder of tools)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 300, len(text.splitlines())
    for command in ("python3 -m pip install torch==2.13.0 -r requirements-dev.txt", "bash scripts/setup_comfyui.sh",
                    "python3 benchmarks/drag_edit.py", "python3 -m pytest -q"):
        assert command in text, command
    assert "python3 -m pytest -q" in open(os.path.join(ROOT, ".ci", "run")).read()
    for word in ("workplace", "../shared", "harness"):
        assert word not in text, word
    import re

    for link in re.findall(r"\]\(((?:docs/|CONTRIBUTING|CHANGELOG)[^)#]*)", text):
        assert os.path.exists(os.path.join(ROOT, link)), link


def test_pyproject_has_the_registry_fields():
    """The Comfy Registry's pyproject fields (docs.comfy.org/registry/specifications): name (< 100
    characters, letters, digits, '-', '_', '.', no two specials in a row, not starting with a digit or
    special), X.Y.Z version, [tool.comfy] PublisherId and DisplayName, the minimum ComfyUI the pack
    checks at load (nodes/version_check.py), and classifiers from the registry's OS / GPU / license
    families only."""
    import re
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    project, comfy = meta["project"], meta["tool"]["comfy"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), project["version"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]), comfy["PublisherId"]
    assert comfy["DisplayName"].strip()
    assert comfy["requires-comfyui"].startswith(">=")  # equal to MIN_COMFYUI: test_min_comfyui_declared_equals_checked
    families = ("Operating System :: ", "Environment :: GPU :: ", "License :: OSI Approved :: ")
    assert project["classifiers"] and all(c.startswith(families) for c in project["classifiers"]), project["classifiers"]
    assert "Operating System :: Microsoft :: Windows" in project["classifiers"]
