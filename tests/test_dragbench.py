"""DragBench data: the restricted unpickler, metadata -> points/mask, the layout, the summary."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fastdrag_core import dragbench as db
from fastdrag_core.points import parse_points


def official_meta(mask=None):
    """What labeling_tool.py::save_all pickles: Gradio click tuples (ints), a uint8 mask."""
    if mask is None:
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 20:50] = 1
    return {"prompt": "a photo of a cat", "points": [(20, 12), (30, 14), (40, 25), (44, 20)], "mask": mask}


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ------------------------------------------------------------------------------------ unpickler
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_official_metadata_every_protocol(tmp_path, protocol):
    meta = official_meta()
    path = write(str(tmp_path / "meta_data.pkl"), pickle.dumps(meta, protocol=protocol))
    got = db.read_meta(path)
    assert got.prompt == "a photo of a cat"
    assert got.points == ((20.0, 12.0), (30.0, 14.0), (40.0, 25.0), (44.0, 20.0))
    assert got.handles == ((20.0, 12.0), (40.0, 25.0)) and got.targets == ((30.0, 14.0), (44.0, 20.0))
    assert got.mask.dtype == bool and got.mask.shape == (48, 64)
    assert np.array_equal(got.mask, meta["mask"] > 0)


def test_numpy_scalars_and_float_zero_mask(tmp_path):
    """No mask drawn: the tool stores float32 zeros -> None (whole image editable); numpy ints in points."""
    meta = {"prompt": "", "points": [(np.int64(3), np.int32(4)), [5.5, 6]], "mask": np.zeros((8, 8), np.float32),
            "extra": {"nested": (1, 2.0, None, True, b"raw")}}
    got = db.read_meta(write(str(tmp_path / "m.pkl"), pickle.dumps(meta, protocol=2)))
    assert got.points == ((3.0, 4.0), (5.5, 6.0)) and got.mask is None and got.prompt == ""


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


class _Popen:
    def __reduce__(self):
        return (subprocess.Popen, (["true"],))


def test_crafted_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"prompt": "x", "points": [(1, 1), (2, 2)], "mask": _System(f"touch {marker}")})
    # the payload is live: an ordinary pickle.loads runs the command (in a child process)
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(payload)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(probe)!r}, 'rb'))"], check=True)
    assert marker.exists()
    marker.unlink()

    path = write(str(tmp_path / "cat" / "s1" / "meta_data.pkl"), payload)
    with pytest.raises(db.UnsafePickleError) as e:
        db.read_meta(path)
    assert not marker.exists()
    msg = str(e.value)
    assert path in msg and ("posix.system" in msg or "nt.system" in msg) and "not run" in msg


@pytest.mark.parametrize("obj, name", [(_Eval(), "builtins.eval"), (_Popen(), "subprocess.Popen")])
def test_refuses_other_globals(tmp_path, obj, name):
    path = write(str(tmp_path / "m.pkl"), pickle.dumps({"prompt": obj}))
    with pytest.raises(db.UnsafePickleError, match=name.replace(".", r"\.")):
        db.read_meta(path)


def test_refuses_hand_written_opcodes(tmp_path):
    """GLOBAL + REDUCE written by hand (protocol 0), and a numpy function that is not on the list."""
    for data, name in ((b"cbuiltins\nopen\n(S'/tmp/x'\nS'w'\ntR.", "builtins.open"),
                       (b"cnumpy\nload\n(S'/tmp/x'\ntR.", "numpy.load")):
        with pytest.raises(db.UnsafePickleError, match=name.replace(".", r"\.")):
            db.read_meta(write(str(tmp_path / "m.pkl"), data))


def test_corrupt_and_wrong_shapes(tmp_path):
    good = pickle.dumps(official_meta())
    with pytest.raises(db.DragBenchError, match="not a readable pickle"):
        db.read_meta(write(str(tmp_path / "a.pkl"), good[:20]))
    cases = [({"prompt": "x"}, "missing 'points'"),
             ({"prompt": 3, "points": [(1, 2), (3, 4)]}, "'prompt' must be a string"),
             ({"prompt": "x", "points": [(1, 2)]}, "got 1"),
             ({"prompt": "x", "points": [(1, 2), (3, float("nan"))]}, "point 1"),
             ({"prompt": "x", "points": [(1, 2), (3, 4)], "mask": "no"}, "'mask' must be"),
             ([1, 2], "expected a dict")]
    for obj, msg in cases:
        path = write(str(tmp_path / "b.pkl"), pickle.dumps(obj))
        with pytest.raises(db.DragBenchError, match=msg):
            db.read_meta(path)
    with pytest.raises(db.DragBenchError, match="cannot read"):
        db.read_meta(str(tmp_path / "missing.pkl"))


def test_points_json_and_checks():
    meta = db.parse_meta(official_meta(), "m")
    parsed = parse_points(meta.points_json(64, 48))
    assert (parsed.width, parsed.height) == (64, 48)
    assert parsed.handles == ((20.0, 12.0), (40.0, 25.0)) and parsed.targets == ((30.0, 14.0), (44.0, 20.0))
    assert json.loads(meta.points_json(64, 48))["drags"][0] == {"handle": [20, 12], "target": [30, 14]}
    db.check_sample(meta, 64, 48, "m")
    with pytest.raises(db.DragBenchError, match="target 1 .* outside the 44x48 image"):
        db.check_sample(meta, 44, 48, "m")
    with pytest.raises(db.DragBenchError, match="mask is 64x48 but the image is 64x50"):
        db.check_sample(meta, 64, 50, "m")


# ---------------------------------------------------------------------------------------- layout
def make_tree(root):
    for cat, names in {"other_objects": ["b", "a"], "animals": ["z"], "zzz_custom": ["q"]}.items():
        for n in names:
            write(os.path.join(root, cat, n, db.META_FILE), pickle.dumps(official_meta()))
    os.makedirs(os.path.join(root, "animals", "empty_folder"))
    write(os.path.join(root, "animals", ".DS_Store"), b"")
    write(os.path.join(root, ".DS_Store"), b"")


def test_list_and_find_samples(tmp_path):
    make_tree(str(tmp_path))
    samples = db.list_samples(str(tmp_path))
    assert [s.key for s in samples] == ["animals/z", "other_objects/a", "other_objects/b", "zzz_custom/q"]
    assert db.find_sample(samples, "1").key == "other_objects/a"
    assert db.find_sample(samples, "-1").key == "zzz_custom/q"
    assert db.find_sample(samples, "other_objects/b").name == "b"
    assert db.find_sample(samples, "q").category == "zzz_custom"
    with pytest.raises(db.DragBenchError, match="out of range: there are 4 samples"):
        db.find_sample(samples, "4")
    with pytest.raises(db.DragBenchError, match="no sample 'nope'"):
        db.find_sample(samples, "nope")
    assert db.result_dir("/out", samples[0]) == os.path.join("/out", "animals", "z")
    with pytest.raises(db.DragBenchError, match="no such DragBench folder"):
        db.list_samples(str(tmp_path / "nothing"))


# --------------------------------------------------------------------------------------- summary
def test_summary_hand_worked():
    recs = [{"category": "animals", "sample": "animals/a", "distances": [1.0, 3.0], "if": 0.8, "seconds": 2.0,
             "n_points": 2},
            {"category": "animals", "sample": "animals/b", "distances": [8.0], "if": 0.6, "seconds": 4.0,
             "n_points": 1},
            {"category": "art_work", "sample": "art_work/c", "distances": [0.0], "if": 1.0, "seconds": None,
             "n_points": 1}]
    s = db.summarize(recs, [{"sample": "art_work/x", "error": "unsafe"}], run={"method": "fastdrag"})
    # MD is the mean over points (official), not over per-image means
    assert s["overall"]["md"] == pytest.approx(12 / 4)
    assert s["overall"]["if"] == pytest.approx(2.4 / 3)
    assert s["overall"]["seconds_per_image"] == pytest.approx(3.0)
    assert s["overall"]["seconds_per_point"] == pytest.approx(6.0 / 3)  # only samples with a time
    assert s["overall"]["n_samples"] == 3 and s["overall"]["n_points"] == 4
    assert list(s["categories"]) == ["art_work", "animals"]  # official order
    assert s["categories"]["animals"]["md"] == pytest.approx(4.0)
    assert s["categories"]["art_work"]["seconds_per_image"] is None
    assert s["failed"] == [{"sample": "art_work/x", "error": "unsafe", "kind": "data"}]
    assert s["run"] == {"method": "fastdrag"} and s["complete"] and s["not_run"] == s["missing_metrics"] == []
    table = db.summary_table(s)
    assert "overall" in table and "3.00" in table and "art_work/x (data): unsafe" in table
    md = db.summary_markdown(s, {"animals": "contact_sheets/animals.png"})
    assert "| **overall** | **3** | **4** | **3.00** |" in md and "contact_sheets/animals.png" in md
    json.dumps(s)  # serialisable


def test_summary_one_missing_metric_keeps_the_others():
    """A sample without IF (no LPIPS weights) still counts for MD and time, and the summary says so."""
    recs = [{"category": "animals", "sample": "animals/a", "distances": [2.0, 4.0], "if": None, "seconds": 3.0,
             "n_points": 2, "missing": {"if": "no AlexNet weights"}},
            {"category": "animals", "sample": "animals/b", "distances": None, "if": 0.5, "seconds": 1.0,
             "n_points": 1, "missing": {"md": "DIFT failed"}},
            {"category": "animals", "sample": "animals/c", "distances": [6.0], "if": 0.7, "seconds": None,
             "n_points": 1}]
    s = db.summarize(recs, [{"sample": "animals/x", "error": "server gone", "kind": "server"}],
                     not_run=[{"sample": "animals/y", "reason": "the server stopped answering"}])
    o = s["overall"]
    assert o["md"] == pytest.approx(12 / 3) and o["n_md"] == 2      # points of a and c
    assert o["if"] == pytest.approx(0.6) and o["n_if"] == 2          # images b and c
    assert o["seconds_per_image"] == pytest.approx(2.0) and o["seconds_per_point"] == pytest.approx(4.0 / 3)
    assert o["n_samples"] == 3 and o["n_points"] == 4
    assert s["missing_metrics"] == [{"sample": "animals/a", "metric": "if", "reason": "no AlexNet weights"},
                                    {"sample": "animals/b", "metric": "md", "reason": "DIFT failed"}]
    assert not s["complete"]
    table = db.summary_table(s)
    assert "animals/a: no IF (no AlexNet weights)" in table and "INCOMPLETE" in table
    assert "animals/y: the server stopped answering" in table and "animals/x (server): server gone" in table
    assert "INCOMPLETE" in db.summary_markdown(s)
    only_data = db.summarize(recs[2:], [{"sample": "animals/x", "error": "unsafe", "kind": "data"}])
    assert only_data["complete"]
