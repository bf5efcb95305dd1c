"""DragBench data: the dataset layout, a restricted reader for ``meta_data.pkl``, the results layout.

DragBench (DragDiffusion, CVPR 2024; field.md §2.1) is a folder of categories, each a folder of
samples ``<category>/<sample>/`` holding ``original_image.png`` and ``meta_data.pkl``: a pickled
dict ``{"prompt": str, "points": [(x, y), ...], "mask": H x W array}`` with the points in image
pixels alternating handle, target, handle, target, ... and the mask 1 (any non-zero) = editable,
all zeros when no mask was drawn. Edited images go to ``<out>/<category>/<sample>/dragged_image.png``
(the layout the official evaluation scripts read).

A pickle can run any code while it loads, so :func:`read_meta` never calls ``pickle.load``: its
unpickler resolves only the few globals that a dict of str / int / float / tuple / list / numpy
arrays needs, and refuses every other one with :class:`UnsafePickleError` naming the file and the
global, before anything is called.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
from dataclasses import dataclass

import numpy as np

IMAGE_FILE = "original_image.png"
META_FILE = "meta_data.pkl"
RESULT_FILE = "dragged_image.png"

# The official scripts' category order (run_eval_point_matching.py); other folders follow, sorted.
OFFICIAL_CATEGORIES = (
    "art_work", "land_scape", "building_city_view", "building_countryside_view", "animals",
    "human_head", "human_upper_body", "human_full_body", "interior_design", "other_objects",
)

# (module, name) -> (module to import, attribute). numpy >= 2 writes ``numpy._core``, older
# numpy ``numpy.core``; each is resolved in whichever the installed numpy has.
_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),  # ndarray, protocol 2-4
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),          # ndarray, protocol 5
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),              # numpy scalars
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS | {("_codecs", "encode")})  # bytes in protocol 2


class UnsafePickleError(ValueError):
    """A pickle references a global that DragBench's metadata never needs; nothing was run."""


class DragBenchError(ValueError):
    """A DragBench file or folder that cannot be used (the message names it and says why)."""


def _resolve(module: str, name: str):
    if module.startswith("numpy"):
        for candidate in (module, module.replace("numpy.core", "numpy._core"),
                          module.replace("numpy._core", "numpy.core")):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")
    return getattr(importlib.import_module(module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):  # every global (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) comes here
        if (module, name) in ALLOWED_GLOBALS:
            return _resolve(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load the global {module}.{name}; DragBench metadata holds only "
            "dicts, lists, tuples, strings, numbers and numpy arrays, so this file is not DragBench "
            "metadata (it was not run)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id {pid!r} (not DragBench metadata)")


def restricted_load(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` admitting only builtin containers/scalars and numpy arrays (see module doc)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / corrupt pickles raise all sorts of errors
        raise DragBenchError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class DragBenchMeta:
    """One sample's metadata: ``points`` in image pixels (x, y), alternating handle, target;
    ``mask`` a bool [H, W] array of the editable region, or ``None`` when none was drawn."""

    prompt: str
    points: tuple[tuple[float, float], ...]
    mask: np.ndarray | None

    @property
    def handles(self):
        return self.points[0::2]

    @property
    def targets(self):
        return self.points[1::2]

    def points_json(self, width: int, height: int) -> str:
        """The pack's points JSON (version 1) for the ``width`` x ``height`` image the points are on."""
        return json.dumps({"version": 1, "width": int(width), "height": int(height),
                           "drags": [{"handle": [_num(h[0]), _num(h[1])], "target": [_num(t[0]), _num(t[1])]}
                                     for h, t in zip(self.handles, self.targets)]})


def _num(v: float):
    return int(v) if float(v).is_integer() else float(v)


def parse_meta(obj, source: str) -> DragBenchMeta:
    """Validate an unpickled ``meta_data.pkl`` object; errors name ``source`` and the field."""
    if not isinstance(obj, dict):
        raise DragBenchError(f"{source}: expected a dict with 'prompt', 'points', 'mask', got {type(obj).__name__}")
    missing = [k for k in ("prompt", "points") if k not in obj]
    if missing:
        raise DragBenchError(f"{source}: missing {', '.join(repr(k) for k in missing)} "
                             f"(keys: {sorted(map(str, obj))})")
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise DragBenchError(f"{source}: 'prompt' must be a string, got {type(prompt).__name__}")
    raw = obj["points"]
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or not raw or len(raw) % 2:
        n = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
        raise DragBenchError(f"{source}: 'points' must be a non-empty list of handle, target, handle, "
                             f"target, ... (x, y) points; got {n}")
    points = []
    for k, p in enumerate(raw):
        if isinstance(p, np.ndarray):
            p = p.tolist()
        if (not isinstance(p, (list, tuple)) or len(p) != 2
                or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                           and np.isfinite(v) for v in p)):
            raise DragBenchError(f"{source}: point {k} must be (x, y) with two finite numbers, got {p!r}")
        points.append((float(p[0]), float(p[1])))
    mask = obj.get("mask")
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.ndim not in (2, 3) or mask.dtype == object:
            raise DragBenchError(f"{source}: 'mask' must be an H x W numeric array, got "
                                 f"{type(mask).__name__} {getattr(mask, 'shape', '')}")
        if mask.ndim == 3:
            mask = mask[..., 0]
        mask = np.asarray(mask) > 0
        if not mask.any():
            mask = None  # the labeling tool stores zeros when no mask was drawn: the whole image is editable
    return DragBenchMeta(prompt=prompt, points=tuple(points), mask=mask)


def read_meta(path: str) -> DragBenchMeta:
    """Read and validate a ``meta_data.pkl`` with the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DragBenchError(f"{path}: cannot read ({e.strerror})") from None
    return parse_meta(restricted_load(data, path), path)


def check_sample(meta: DragBenchMeta, width: int, height: int, source: str) -> None:
    """Points inside the image and a mask of the image's size, else DragBenchError naming ``source``."""
    for k, (x, y) in enumerate(meta.points):
        if not (0 <= x < width and 0 <= y < height):
            kind = "handle" if k % 2 == 0 else "target"
            raise DragBenchError(f"{source}: {kind} {k // 2} ({x:g}, {y:g}) is outside the {width}x{height} image")
    if meta.mask is not None and meta.mask.shape != (height, width):
        raise DragBenchError(f"{source}: mask is {meta.mask.shape[1]}x{meta.mask.shape[0]} but the image is "
                             f"{width}x{height}")


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class SampleRef:
    category: str
    name: str
    path: str  # the sample folder

    @property
    def key(self) -> str:
        return f"{self.category}/{self.name}"

    @property
    def image_path(self) -> str:
        return os.path.join(self.path, IMAGE_FILE)

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, META_FILE)


def _category_order(name: str):
    return (0, OFFICIAL_CATEGORIES.index(name), name) if name in OFFICIAL_CATEGORIES else (1, 0, name)


def list_samples(root: str) -> list[SampleRef]:
    """Every sample folder of a DragBench root, in the official category order then by name.

    A sample folder is any folder inside a category folder that has ``original_image.png`` or
    ``meta_data.pkl`` (hidden entries such as ``.DS_Store`` are skipped)."""
    if not os.path.isdir(root):
        raise DragBenchError(f"{root}: no such DragBench folder")
    samples = []
    for cat in sorted((c for c in os.listdir(root) if not c.startswith(".")
                       and os.path.isdir(os.path.join(root, c))), key=_category_order):
        cdir = os.path.join(root, cat)
        for name in sorted(os.listdir(cdir)):
            sdir = os.path.join(cdir, name)
            if name.startswith(".") or not os.path.isdir(sdir):
                continue
            if os.path.exists(os.path.join(sdir, IMAGE_FILE)) or os.path.exists(os.path.join(sdir, META_FILE)):
                samples.append(SampleRef(cat, name, sdir))
    if not samples:
        raise DragBenchError(f"{root}: no DragBench samples (<category>/<sample>/{IMAGE_FILE} + {META_FILE})")
    return samples


def find_sample(samples: list[SampleRef], key: str) -> SampleRef:
    """``key``: an index into ``samples`` ("0", "-1"), "category/sample", or a sample name."""
    key = str(key).strip()
    try:
        index = int(key)
    except ValueError:
        index = None
    if index is not None:
        if not -len(samples) <= index < len(samples):
            raise DragBenchError(f"sample index {index} is out of range: there are {len(samples)} samples "
                                 f"(0-{len(samples) - 1})")
        return samples[index]
    hits = [s for s in samples if s.key == key.replace("\\", "/")] or [s for s in samples if s.name == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise DragBenchError(f"sample name {key!r} is in several categories ({', '.join(s.category for s in hits)}); "
                             "give category/sample")
    raise DragBenchError(f"no sample {key!r}; give an index (0-{len(samples) - 1}), category/sample or a sample "
                         f"name such as {samples[0].key!r}")


def result_dir(out: str, ref: SampleRef) -> str:
    """``<out>/<category>/<sample>``: the official results layout."""
    return os.path.join(out, ref.category, ref.name)


# ------------------------------------------------------------------------------------------ summary
SUMMARY_KEYS = ("md", "if", "seconds_per_image", "seconds_per_point", "n_samples", "n_points")


def _aggregate(records: list[dict]) -> dict:
    """MD = mean over all points (the official mean over the 349 pairs), IF = mean over images,
    seconds per image = mean edit time, seconds per point = total edit time / points."""
    dists = [d for r in records for d in r["distances"]]
    secs = [r["seconds"] for r in records if r.get("seconds") is not None]
    n_points = sum(r["n_points"] for r in records)
    return {
        "md": float(np.mean(dists)) if dists else None,
        "if": float(np.mean([r["if"] for r in records])) if records else None,
        "seconds_per_image": float(np.mean(secs)) if secs else None,
        "seconds_per_point": (float(sum(secs)) / sum(r["n_points"] for r in records if r.get("seconds") is not None)
                              if secs else None),
        "n_samples": len(records),
        "n_points": n_points,
    }


def summarize(records: list[dict], failed: list[dict], run: dict | None = None) -> dict:
    """The run summary (``summary.json``).

    Args:
        records: per sample ``{"category", "sample", "distances": [px, ...], "if", "seconds", "n_points"}``
            (``seconds`` may be None when unknown).
        failed: ``[{"sample": "category/sample", "error": str}]``.
        run: settings of the run, stored under ``"run"``.
    """
    cats = sorted({r["category"] for r in records}, key=_category_order)
    out = {"overall": _aggregate(records),
           "categories": {c: _aggregate([r for r in records if r["category"] == c]) for c in cats},
           "failed": [{"sample": f["sample"], "error": f["error"]} for f in failed]}
    if run is not None:
        out["run"] = run
    return out


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def summary_rows(summary: dict) -> list[list[str]]:
    """Header + one row per category + the overall row, as strings."""
    rows = [["category", "samples", "points", "MD (px, lower is better)", "IF (higher is better)", "s / image", "s / point"]]
    items = list(summary["categories"].items()) + [("overall", summary["overall"])]
    for name, s in items:
        rows.append([name, str(s["n_samples"]), str(s["n_points"]), _fmt(s["md"], ".2f"), _fmt(s["if"], ".4f"),
                     _fmt(s["seconds_per_image"], ".2f"), _fmt(s["seconds_per_point"], ".2f")])
    return rows


def summary_table(summary: dict) -> str:
    """A plain-text table for the terminal."""
    rows = summary_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    if summary["failed"]:
        lines.append(f"failed: {len(summary['failed'])} sample(s)")
        lines += [f"  {f['sample']}: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines)


def summary_markdown(summary: dict, sheets: dict[str, str] | None = None) -> str:
    """``summary.md``: settings, the table, failures and links to the contact sheets."""
    rows = summary_rows(summary)
    lines = ["# DragBench results", ""]
    for k, v in (summary.get("run") or {}).items():
        lines.append(f"- **{k}**: {v if isinstance(v, str) else json.dumps(v)}")
    lines += ["", "| " + " | ".join(rows[0]) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + " |"]
    for r in rows[1:-1]:
        lines.append("| " + " | ".join(r) + " |")
    lines.append("| " + " | ".join(f"**{c}**" for c in rows[-1]) + " |")
    lines += ["", "MD: mean distance in source pixels between each target and where DIFT finds the handle's "
              "content in the edited image (mean over all points). IF: 1 - LPIPS (AlexNet, 224x224), mean over "
              "images. Seconds: edit time in the server per image, and total edit time / points."]
    if summary["failed"]:
        lines += ["", f"## Failed ({len(summary['failed'])})", ""]
        lines += [f"- `{f['sample']}`: {f['error']}" for f in summary["failed"]]
    if sheets:
        lines += ["", "## Contact sheets", ""]
        lines += [f"- {cat}: [{path}]({path})" for cat, path in sheets.items()]
    return "\n".join(lines) + "\n"
