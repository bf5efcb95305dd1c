"""Hostile DragBench files through the pure reader (fastdrag_core.dragbench.load_sample).

The corpus (tests/hostile_dragbench.py) runs in one child process, so a reader that dereferences
a forged object pointer fails this test with the child's signal instead of killing pytest; the
child reports, per case, the exception type, its message, the seconds and the peak memory.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fastdrag_core import dragbench as db
from fastdrag_core.points import MAX_DRAGS
from tests import hostile_dragbench as hd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import importlib.util, json, os, resource, sys, time
spec = importlib.util.spec_from_file_location("dragbench", os.path.join(sys.argv[2], "fastdrag_core", "dragbench.py"))
db = sys.modules["dragbench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(db)  # without fastdrag_core/__init__ (torch): only what the reader needs
root = sys.argv[1]
out = {}
for ref in db.list_samples(root, shown="DragBench", within=root):
    t0 = time.perf_counter()
    try:
        db.load_sample(ref, within=root)
        kind, msg = "ok", ""
    except BaseException as e:
        kind, msg = type(e).__name__, str(e)
    out[ref.name] = {"kind": kind, "msg": msg[:100000], "len": len(msg), "s": time.perf_counter() - t0}
out["_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hostile_db"))
    hd.write_corpus(root)
    os.makedirs(os.path.join(root, "hostile", "valid"))
    with open(os.path.join(root, "hostile", "valid", db.META_FILE), "wb") as f:
        f.write(hd.valid_meta_bytes())
    with open(os.path.join(root, "hostile", "valid", db.IMAGE_FILE), "wb") as f:
        f.write(hd.good_png())
    r = subprocess.run([sys.executable, "-c", CHILD, root, REPO], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"the reader's process died (exit {r.returncode}): {r.stderr[-2000:]}"
    return root, json.loads(r.stdout)


def test_corpus_is_broad():
    names = [c.name for c in hd.CASES]
    assert len(names) == len(set(names)) and len(names) >= 60
    for word in ("forged_pointer", "structured", "void", "datetime", "bytes", "unicode", "complex", "subarray",
                 "1e12", "deep_nested", "laughs", "truncated", "junk", "image_bomb"):
        assert any(word in n for n in names), word


def test_every_hostile_file_is_refused_clearly(corpus_results):
    root, res = corpus_results
    assert res.pop("valid")["kind"] == "ok"
    peak = res.pop("_peak_mib")
    assert set(res) == {c.name for c in hd.CASES}
    bad = []
    for case in hd.CASES:
        r = res[case.name]
        shown = f"DragBench/hostile/{case.name}/{case.file}"
        if (r["kind"] not in ("DragBenchError", "UnsafePickleError") or not r["msg"].startswith(shown + ": ")
                or case.expect not in r["msg"].lower() or r["len"] > 400 or root in r["msg"] or r["s"] > 2.0):
            bad.append((case.name, r["kind"], r["len"], round(r["s"], 2), r["msg"][:300]))
    assert not bad, "\n".join(map(str, bad))
    assert peak < 600, f"the corpus took {peak:.0f} MiB at peak"  # no size bomb was allocated


def test_max_drags_matches_the_points_module():
    assert db.MAX_DRAGS == MAX_DRAGS


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_plain_dtype_still_reads(tmp_path, protocol):
    """Masks of every accepted dtype and byte order, points as a float / int array and numpy scalars."""
    mask = np.zeros((6, 5), np.float64)
    mask[1:4, 2:4] = 1
    for dt in ("?", "i1", "<i2", ">i4", "i8", "u1", ">u2", "u4", "u8", "<f2", ">f4", "f8"):
        obj = {"prompt": "p", "points": np.array([[1, 2], [3, 4]], dt if dt != "?" else "f4"),
               "mask": mask.astype(dt), "extra": [np.float32(1.5), np.int64(7)]}
        got = db.parse_meta(db.restricted_load(pickle.dumps(obj, protocol=protocol), "m"), "m", (5, 6))
        assert got.points == ((1.0, 2.0), (3.0, 4.0)), dt
        assert got.mask.dtype == bool and np.array_equal(got.mask, mask > 0), dt
    # numpy scalars become their Python numbers; a Fortran-ordered mask keeps its layout's meaning
    obj = {"prompt": "p", "points": [(np.int64(3), np.float32(4.5)), (np.uint8(1), 2)],
           "mask": np.asfortranarray(mask)}
    got = db.parse_meta(db.restricted_load(pickle.dumps(obj, protocol=protocol), "m"), "m")
    assert got.points == ((3.0, 4.5), (1.0, 2.0)) and np.array_equal(got.mask, mask > 0)


def test_links_out_of_the_allowed_folder_are_refused(tmp_path):
    inside, outside = tmp_path / "input", tmp_path / "outside"
    good = outside / "cat" / "s"
    good.mkdir(parents=True)
    (good / db.META_FILE).write_bytes(hd.valid_meta_bytes())
    (good / db.IMAGE_FILE).write_bytes(hd.good_png())
    root = inside / "DragBench"
    (root / "animals" / "plain").mkdir(parents=True)
    (root / "animals" / "plain" / db.META_FILE).write_bytes(hd.valid_meta_bytes())
    (root / "animals" / "plain" / db.IMAGE_FILE).write_bytes(hd.good_png())
    (root / "animals" / "linked_sample").symlink_to(good)
    (root / "animals" / "linked_image").mkdir()
    (root / "animals" / "linked_image" / db.META_FILE).write_bytes(hd.valid_meta_bytes())
    (root / "animals" / "linked_image" / db.IMAGE_FILE).symlink_to(good / db.IMAGE_FILE)
    (root / "animals" / "linked_meta").mkdir()
    (root / "animals" / "linked_meta" / db.META_FILE).symlink_to(good / db.META_FILE)
    (root / "animals" / "linked_meta" / db.IMAGE_FILE).write_bytes(hd.good_png())
    (root / "linked_category").symlink_to(outside / "cat")
    within = str(inside)
    refs = {r.name: r for r in db.list_samples(str(root), shown="DragBench", within=within)}
    assert set(refs) == {"plain", "linked_sample", "linked_image", "linked_meta"}  # the linked category is not read
    db.load_sample(refs["plain"], within=within)
    for name, shown in (("linked_sample", "DragBench/animals/linked_sample"),
                        ("linked_image", f"DragBench/animals/linked_image/{db.IMAGE_FILE}"),
                        ("linked_meta", f"DragBench/animals/linked_meta/{db.META_FILE}")):
        with pytest.raises(db.DragBenchError) as e:
            db.load_sample(refs[name], within=within)
        assert str(e.value) == f"{shown}: is a link to a file outside the allowed folder; refused"
    (inside / "LinkedBench").symlink_to(outside)
    with pytest.raises(db.DragBenchError, match="^Linked: is a link to a folder outside"):
        db.list_samples(str(inside / "LinkedBench"), shown="Linked", within=within)
    # links that stay inside are fine
    (root / "animals" / "alias").symlink_to(root / "animals" / "plain")
    db.load_sample(db.find_sample(db.list_samples(str(root), within=within), "alias"), within=within)


def test_a_long_sample_key_gives_a_short_message(tmp_path):
    hd.write_case(str(tmp_path / "cat" / "s"), hd.Case("s", hd.valid_meta_bytes(), hd.good_png(), ""))
    with pytest.raises(db.DragBenchError) as e:
        db.find_sample(db.list_samples(str(tmp_path)), "x" * 100_000)
    assert str(e.value).startswith("no sample 'xxx") and len(str(e.value)) < 300
