"""nodes/comfy_adapter.py: the ComfyUI internals behind one seam. The pure logic (resolution, which
nodes a missing internal disables, the one log line), with a fake importer and no ComfyUI (the pack loaded
in ComfyUI with one internal deleted: tests/integration/test_comfy_adapter_load.py)."""

import importlib.util
import logging
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def adapter():
    spec = importlib.util.spec_from_file_location("fastdrag_comfy_adapter", os.path.join(ROOT, "nodes", "comfy_adapter.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


A = adapter()


def test_every_internal_names_its_nodes_and_the_checked_version():
    node_ids = {"FastDragPoints", "FastDragInvert", "FastDragWarp", "FastDragBNNI", "FastDragMoveObject",
                "FastDragSample", "FastDragEdit",
                "DragDiffusionLoRA", "DragDiffusionDrag", "DragDiffusionSample", "DragDiffusionEdit",
                "DragBenchSample", "DragMeanDistance", "DragImageFidelity"}
    for key, it in A.INTERNALS.items():
        assert it.nodes and set(it.nodes) <= node_ids, key
        assert "v0.8.0" in it.checked and "fc0cb10" in it.checked, key
    for name in ("TrainGuider", "process_cond_list"):
        assert name in A.INTERNALS


def fake_importer(modules):
    def importer(name):
        if name not in modules:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return modules[name]
    return importer


def test_resolve_reports_missing_modules_and_attributes():
    table = {"a": A.Internal("m1", "X", ("N1",)), "b": A.Internal("m1", "Y.Z", ("N2",)),
             "c": A.Internal("m2", "W", ("N1", "N3"))}
    m1 = types.SimpleNamespace(X=1, Y=types.SimpleNamespace(Z=2))
    found, missing = A.resolve(table, fake_importer({"m1": m1}))
    assert set(found) == {"a", "b"} and set(missing) == {"c"} and "ModuleNotFoundError" in missing["c"]
    del m1.Y.Z
    found, missing = A.resolve(table, fake_importer({"m1": m1}))
    assert set(found) == {"a"} and "AttributeError" in missing["b"]
    assert A.disabled_nodes(missing, table) == {"N2": ["m1.Y.Z"], "N1": ["m2.W"], "N3": ["m2.W"]}


def test_a_missing_internal_disables_only_its_nodes_with_one_log_line(caplog):
    classes = [type(n, (), {}) for n in ("FastDragInvert", "DragDiffusionLoRA", "DragDiffusionEdit", "FastDragWarp")]
    with caplog.at_level(logging.INFO):
        kept = A.available_nodes(classes, {"TrainGuider": "AttributeError: gone"})
    assert [c.__name__ for c in kept] == ["FastDragInvert", "FastDragWarp"]
    lines = [r for r in caplog.records if "FastDrag" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    msg = lines[0].getMessage()
    assert "comfy_extras.nodes_train.TrainGuider" in msg and "v0.8.0 (fc0cb10)" in msg
    assert "DragDiffusionLoRA, DragDiffusionEdit are disabled" in msg and "other 2 load" in msg
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert A.available_nodes(classes, {}) == classes
    assert not caplog.records


def test_get_and_runtime_reaches_fail_with_a_clear_error():
    # without ComfyUI on this python's path every internal is missing: get() says which and where
    if A.MISSING:
        with pytest.raises(A.MissingInternal, match=r"no comfy_extras\.nodes_train\.TrainGuider .*v0\.8\.0"):
            A.get("TrainGuider")
        placeholder = A.base_class("Sampler")
        assert isinstance(placeholder, type) and placeholder is not A.base_class("EPS")
    wrapped = types.SimpleNamespace(inner_model=types.SimpleNamespace(inner_model="base"))
    assert A.sampler_base_model(wrapped, "N") == "base"
    with pytest.raises(A.MissingInternal, match=r"N: ComfyUI's sampler model .* has no \.inner_model\.inner_model"):
        A.sampler_base_model(types.SimpleNamespace(inner_model=object()), "N")
    with pytest.raises(A.MissingInternal, match=r"guider \(CFGGuider\) has no \.inner_model"):
        A.guider_base_model(object(), "N")
