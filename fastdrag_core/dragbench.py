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
global, before anything is called. Even the numpy globals it admits are never numpy's own: they
are stand-ins that only record what the file declares (a dtype's spec and state, an array's shape
and raw bytes). An array becomes a numpy array only after :func:`parse_meta` has checked that its
dtype is a plain bool / int / float one (no object, structured, void, subarray, string, datetime
or complex dtype, whatever flags the file claims), that its shape is what the field needs (the
image's size for the mask) and that its bytes are exactly shape x itemsize. So a forged object
pointer, a stride-0 "50000 x 50000" mask or a 10^12-element claim is refused before one element
is read or one byte allocated.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from dataclasses import dataclass

import numpy as np

IMAGE_FILE = "original_image.png"
META_FILE = "meta_data.pkl"
RESULT_FILE = "dragged_image.png"

MAX_META_BYTES = 64 << 20  # a 2048 x 2048 float64 mask is 32 MiB; DragBench's are 512 x 512 uint8
MAX_IMAGE_PIXELS = 4096 * 4096  # checked from the PNG header, before decoding
MAX_DRAGS = 32  # = fastdrag_core.points.MAX_DRAGS (torch-free copy for the runner; a test keeps them equal)
MAX_PROMPT_CHARS = 4096
MAX_PICKLE_OPS = 100_000  # a DragBench pickle has a few hundred opcodes (the mask is one bytes object)

# The official scripts' category order (run_eval_point_matching.py); other folders follow, sorted.
OFFICIAL_CATEGORIES = (
    "art_work", "land_scape", "building_city_view", "building_countryside_view", "animals",
    "human_head", "human_upper_body", "human_full_body", "interior_design", "other_objects",
)

# numpy >= 2 writes ``numpy._core``, older numpy ``numpy.core``.
_RECONSTRUCT = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct")}  # protocol 2-4
_FROMBUFFER = {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}  # protocol 5
_SCALAR = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}  # numpy scalars
ALLOWED_GLOBALS = frozenset(_RECONSTRUCT | _FROMBUFFER | _SCALAR
                            | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})  # bytes, protocol 2

# The only dtypes an array or scalar may have: bool, integers, floats (spec as numpy pickles it).
_PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


class UnsafePickleError(ValueError):
    """A pickle references a global that DragBench's metadata never needs; nothing was run."""


class DragBenchError(ValueError):
    """A DragBench file or folder that cannot be used (the message names it and says why)."""


def short_repr(value, limit: int = 60) -> str:
    """``repr`` of a scalar, cut to ``limit`` characters; containers and arrays by type and size only
    (never their elements: a file may hold millions, or a structure deeper than repr can walk)."""
    if isinstance(value, (str, bytes, int, float, bool, type(None), np.generic)):
        r = repr(value)
        return r if len(r) <= limit else r[: limit - 3] + "..."
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, _Array):
        return f"an array {value.describe()}"
    return f"a {type(value).__name__}"


# ------------------------------------------------------------------- stand-ins for numpy's pickle API
def _dims(shape) -> str:
    return "x".join(str(d) if d < 10**12 else "(huge)" for d in shape)


class _Dtype:
    """What the file declares for ``numpy.dtype(spec, align, copy)`` and its ``__setstate__``."""

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state

    def resolve(self) -> np.dtype | None:
        """The numpy dtype when it is a plain bool / int / float one as numpy pickles it, else None."""
        args, state = getattr(self, "args", None), getattr(self, "state", None)
        if (not isinstance(args, tuple) or not 1 <= len(args) <= 3 or not isinstance(args[0], str)
                or args[0] not in _PLAIN_DTYPES or not all(type(a) in (bool, int) and a in (0, 1) for a in args[1:])):
            return None
        order = "="
        if state is not None:
            if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
                    or state[1] not in ("<", ">", "|", "=") or state[2:5] != (None, None, None)
                    or state[5:8] != (-1, -1, 0)):  # subarray, names, fields, elsize, alignment, flags
                return None
            order = state[1]
        dt = np.dtype(args[0])
        return dt.newbyteorder(order) if order in "<>" and dt.itemsize > 1 else dt

    def describe(self) -> str:
        args = getattr(self, "args", None)
        spec = args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "?"
        return short_repr(spec, 20).strip("'")


class _Array:
    """What the file declares for an ndarray: ``_reconstruct`` + ``__setstate__`` (protocols 2-4) or
    ``_frombuffer`` (protocol 5). Turned into a numpy array only by :meth:`build`."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    @classmethod
    def from_buffer(cls, buf, dtype, shape, order="C"):
        a = cls()
        a.state = (1, shape, dtype, order == "F", buf)
        return a

    @property
    def shape(self) -> tuple | None:
        """The declared shape (non-negative ints, at most 4 dimensions), or None."""
        st = getattr(self, "state", None)
        shape = st[1] if isinstance(st, tuple) and len(st) == 5 else None
        if not isinstance(shape, tuple) or len(shape) > 4 or not all(type(d) is int and d >= 0 for d in shape):
            return None
        return shape

    def problem(self) -> str | None:
        """Why the declared dtype / data cannot be a DragBench array (None when they can), from the
        declaration only: nothing is read."""
        st = getattr(self, "state", None)
        if not isinstance(st, tuple) or len(st) != 5:
            return "is not an ndarray as numpy pickles one"
        dtype, fortran, raw = st[2:]
        if (dtype.resolve() if isinstance(dtype, _Dtype) else None) is None:
            what = dtype.describe() if isinstance(dtype, _Dtype) else short_repr(dtype, 20)
            return (f"has dtype {what}: only bool, integer and float arrays are accepted (no object, structured, "
                    "void, string, datetime or complex data)")
        if not isinstance(raw, (bytes, bytearray)):
            return "holds no raw bytes"
        if type(fortran) not in (bool, int):
            return "has a malformed memory order"
        if self.shape is None:
            return "has a malformed shape"
        return None

    def describe(self) -> str:
        shape, st = self.shape, getattr(self, "state", None)
        dtype = st[2] if isinstance(st, tuple) and len(st) == 5 else None
        return (f"{_dims(shape) if shape is not None else '(malformed shape)'} "
                f"{dtype.describe() if isinstance(dtype, _Dtype) else '?'}")

    def build(self, source: str, field: str) -> np.ndarray:
        """A fresh, writable numpy array of the declared contents, or DragBenchError naming ``field``."""
        problem = self.problem()
        if problem:
            raise DragBenchError(f"{source}: {field} {problem}")
        shape, (_, _, dtype, fortran, raw) = self.shape, self.state
        dt = dtype.resolve()
        need = math.prod(shape) * dt.itemsize
        if len(raw) != need:
            need_s = str(need) if need < 10**15 else "more"
            raise DragBenchError(f"{source}: {field} is declared {_dims(shape)} {dt.name}, which needs {need_s} bytes, "
                                 f"but the file holds {len(raw)}")
        flat = np.frombuffer(bytes(raw), dtype=dt)
        return flat.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="), copy=True)


def _reconstruct(cls, shape=None, typecode=None, *rest):
    if cls is not _Array:
        raise pickle.UnpicklingError("numpy _reconstruct of something that is not an ndarray")
    return _Array()


def _frombuffer(buf, dtype, shape, order="C", *rest):
    return _Array.from_buffer(buf, dtype, shape, order)


def _scalar(dtype, data=None, *rest):
    """A numpy scalar (``np.int64(3)``) as the Python number it holds; plain dtypes only."""
    dt = dtype.resolve() if isinstance(dtype, _Dtype) else None
    if dt is None or not isinstance(data, bytes) or len(data) != dt.itemsize:
        what = dtype.describe() if isinstance(dtype, _Dtype) else "?"
        raise _Refused(f"a numpy scalar of dtype {what} (only bool, integer and float scalars are accepted)")
    return np.frombuffer(data, dtype=dt)[0].item()


def _encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol 2 writes bytes: a str to latin-1 bytes, nothing else."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode other than str -> latin1 bytes")
    return obj.encode("latin1")


class _Refused(Exception):
    """Raised inside the unpickler for declared data that DragBench never holds."""


_STAND_INS = {**{k: _reconstruct for k in _RECONSTRUCT}, **{k: _frombuffer for k in _FROMBUFFER},
              **{k: _scalar for k in _SCALAR}, ("numpy", "ndarray"): _Array, ("numpy", "dtype"): _Dtype,
              ("_codecs", "encode"): _encode}


_SCALAR_TYPES = (str, bytes, int, float, bool, type(None))


def _scalar_keys(load):
    """An opcode handler that first checks every key / set item it will hash is a plain scalar:
    hashing a 100,000-deep nested tuple recurses in C and overflows the stack (a segfault)."""
    def checked(self):
        # after MARK, self.stack holds just the items since the mark (the pure-Python unpickler's layout)
        if load is pickle._Unpickler.load_setitem:
            keys = self.stack[-2:-1]
        elif load in (pickle._Unpickler.load_dict, pickle._Unpickler.load_setitems):
            keys = self.stack[0::2]
        else:  # ADDITEMS, FROZENSET
            keys = self.stack
        for k in keys:
            if type(k) not in _SCALAR_TYPES:
                raise _Refused(f"a dict key or set item that is {short_repr(k)} (DragBench metadata has string keys)")
        return load(self)
    return checked


def _counted(load):
    """An opcode handler that counts: more than MAX_PICKLE_OPS opcodes is not DragBench metadata (and
    bounds the time a hostile file can take in this pure-Python unpickler to well under a second)."""
    def counted(self):
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise _Refused(f"more than {MAX_PICKLE_OPS} pickle operations, far more than DragBench metadata has")
        return load(self)
    return counted


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own (pure-Python) unpickler, so that every opcode that hashes goes through
    :func:`_scalar_keys` first and every opcode is counted; globals only from :data:`_STAND_INS`."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _op, _load in ((pickle.SETITEM, pickle._Unpickler.load_setitem),
                       (pickle.SETITEMS, pickle._Unpickler.load_setitems),
                       (pickle.DICT, pickle._Unpickler.load_dict),
                       (pickle.ADDITEMS, pickle._Unpickler.load_additems),
                       (pickle.FROZENSET, pickle._Unpickler.load_frozenset)):
        dispatch[_op[0]] = _scalar_keys(_load)
    dispatch = {_k: _counted(_v) for _k, _v in dispatch.items()}
    del _op, _load

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source, self.ops = source, 0

    def find_class(self, module, name):  # every global (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) comes here
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        raise UnsafePickleError(
            f"{self.source}: refused to load the global {short_repr(str(module), 80).strip(chr(39))}."
            f"{short_repr(str(name), 80).strip(chr(39))}; DragBench metadata holds only dicts, lists, tuples, "
            "strings, numbers and numpy arrays, so this file is not DragBench metadata (it was not run)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id {short_repr(pid)} (not DragBench metadata)")


def restricted_load(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` admitting only builtin containers/scalars and numpy stand-ins (see module doc)."""
    if len(data) > MAX_META_BYTES:
        raise DragBenchError(f"{source}: {len(data) >> 20} MiB, more than the {MAX_META_BYTES >> 20} MiB a "
                             "DragBench meta_data.pkl can need")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except _Refused as e:
        raise DragBenchError(f"{source}: {e}") from None
    except RecursionError:
        raise DragBenchError(f"{source}: nested too deeply to be DragBench metadata") from None
    except MemoryError:
        raise DragBenchError(f"{source}: needs more memory than DragBench metadata can") from None
    except Exception as e:  # truncated / corrupt pickles raise all sorts of errors
        raise DragBenchError(f"{source}: not a readable pickle ({type(e).__name__}: "
                             f"{short_repr(str(e), 120).strip(chr(39))})") from None


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


def _is_number(v) -> bool:
    return (type(v) is int and abs(v) < 2**53) or (type(v) is float and math.isfinite(v))


def _plain(x) -> "_Array | None":
    """An array as a stand-in: ``_Array`` as it is; an in-memory numpy array (a caller's, not a file's)
    of a bool / int / float dtype re-declared from its bytes; None for anything else."""
    if isinstance(x, _Array):
        return x
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf" and x.dtype.itemsize <= 8 and x.ndim <= 4:
        c = np.ascontiguousarray(x)
        d = _Dtype(c.dtype.newbyteorder("=").str[1:])
        return _Array.from_buffer(c.astype(c.dtype.newbyteorder("="), copy=False).tobytes(), d, c.shape)
    return None


def _points(raw, source: str) -> list[tuple[float, float]]:
    if isinstance(raw, np.ndarray):
        raw = _plain(raw) or raw
    if isinstance(raw, _Array):
        if raw.problem():
            raise DragBenchError(f"{source}: 'points' {raw.problem()}")
        shape = raw.shape
        if len(shape) != 2 or shape[1] != 2 or not 0 < shape[0] <= 2 * MAX_DRAGS:
            if len(shape) == 2 and shape[1] == 2 and shape[0] > 2 * MAX_DRAGS:
                raise DragBenchError(f"{source}: {shape[0] // 2} drags, at most {MAX_DRAGS} are accepted")
            raise DragBenchError(f"{source}: 'points' must be an N x 2 array or a list of (x, y) points, got "
                                 f"{short_repr(raw)}")
        raw = raw.build(source, "'points'").astype(np.float64).tolist()
    if not isinstance(raw, (list, tuple)) or not raw or len(raw) % 2:
        n = len(raw) if isinstance(raw, (list, tuple)) else short_repr(raw)
        raise DragBenchError(f"{source}: 'points' must be a non-empty list of handle, target, handle, "
                             f"target, ... (x, y) points; got {n}")
    if len(raw) > 2 * MAX_DRAGS:
        raise DragBenchError(f"{source}: {len(raw) // 2} drags, at most {MAX_DRAGS} are accepted")
    points = []
    for k, p in enumerate(raw):
        if isinstance(p, np.ndarray):
            p = _plain(p) or p
        if isinstance(p, _Array):
            if p.problem():
                raise DragBenchError(f"{source}: point {k} {p.problem()}")
            p = p.build(source, f"point {k}").tolist() if p.shape in ((2,), (1, 2)) else None
            p = p[0] if isinstance(p, list) and len(p) == 1 else p
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(_is_number(v) for v in p):
            raise DragBenchError(f"{source}: point {k} must be (x, y) with two finite numbers, got {short_repr(p)}"
                                 + (f" ({', '.join(short_repr(v, 24) for v in p)})"
                                    if isinstance(p, (list, tuple)) and len(p) == 2 else ""))
        points.append((float(p[0]), float(p[1])))
    return points


def _mask(raw, source: str, image_size: tuple[int, int] | None) -> np.ndarray | None:
    if raw is None:
        return None
    raw = _plain(raw) or raw
    if isinstance(raw, _Array) and raw.problem():
        raise DragBenchError(f"{source}: 'mask' {raw.problem()}")
    shape = raw.shape if isinstance(raw, _Array) else None
    if shape is None or len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[2] <= 4):
        raise DragBenchError(f"{source}: 'mask' must be an H x W numeric array, got {short_repr(raw)}")
    if min(shape[:2]) < 1 or shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise DragBenchError(f"{source}: mask is {_dims(shape[1::-1])}, "
                             + ("empty" if min(shape[:2]) < 1 else "larger than any DragBench image"))
    if image_size is not None and shape[:2] not in ((image_size[1], image_size[0]), tuple(image_size)):
        # (either orientation: EXIF may turn the image; check_sample compares exactly after decoding)
        raise DragBenchError(f"{source}: mask is {_dims(shape[1::-1])} but the image is "
                             f"{image_size[0]}x{image_size[1]}")
    mask = raw.build(source, "'mask'")
    if mask.ndim == 3:
        mask = mask[..., 0]
    mask = mask > 0
    return mask if mask.any() else None  # the labeling tool stores zeros when no mask was drawn: all editable


def parse_meta(obj, source: str, image_size: tuple[int, int] | None = None) -> DragBenchMeta:
    """Validate an unpickled ``meta_data.pkl`` object; errors name ``source`` and the field.

    ``image_size`` (width, height): when given, the mask's declared shape must match it before its
    bytes are turned into an array."""
    if not isinstance(obj, dict):
        raise DragBenchError(f"{source}: expected a dict with 'prompt', 'points', 'mask', got {short_repr(obj)}")
    missing = [k for k in ("prompt", "points") if k not in obj]
    if missing:
        keys = sorted(short_repr(k, 24) for k in list(obj)[:8])
        raise DragBenchError(f"{source}: missing {', '.join(repr(k) for k in missing)} "
                             f"(keys: {', '.join(keys)}{', ...' if len(obj) > 8 else ''})")
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise DragBenchError(f"{source}: 'prompt' must be a string, got {short_repr(prompt)}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DragBenchError(f"{source}: 'prompt' has {len(prompt)} characters, at most {MAX_PROMPT_CHARS}")
    points = _points(obj["points"], source)
    mask = _mask(obj.get("mask"), source, image_size)
    return DragBenchMeta(prompt=prompt, points=tuple(points), mask=mask)


def read_meta(path: str, source: str | None = None, image_size: tuple[int, int] | None = None) -> DragBenchMeta:
    """Read and validate a ``meta_data.pkl`` with the restricted unpickler; errors name ``source``
    (default ``path``). ``image_size``: see :func:`parse_meta`."""
    source = path if source is None else source
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except OSError as e:
        raise DragBenchError(f"{source}: cannot read ({e.strerror or type(e).__name__})") from None
    return parse_meta(restricted_load(data, source), source, image_size)


def _why(e: BaseException, path: str, source: str) -> str:
    """``Type: message`` of an exception, short, with ``path`` (a server path) shown as ``source``."""
    text = str(e).replace(os.path.abspath(path), source).replace(path, source)
    return f"{type(e).__name__}: {short_repr(text, 120).strip(chr(39))}"


def _open_image(path: str, source: str):
    """PIL's lazy image (header read, nothing decoded) after the pixel cap; DragBenchError otherwise."""
    from PIL import Image

    try:
        im = Image.open(path)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        if isinstance(e, FileNotFoundError):
            raise DragBenchError(f"{source}: no such file") from None
        raise DragBenchError(f"{source}: not a readable image ({_why(e, path, source)})") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
        im.close()
        raise DragBenchError(f"{source}: the image is {w}x{h}, more than the {MAX_IMAGE_PIXELS:,} pixels a "
                             "DragBench sample may have")
    return im


def image_size(path: str, source: str | None = None) -> tuple[int, int]:
    """(width, height) from the image header only (checks the metadata before anything is decoded)."""
    with _open_image(path, path if source is None else source) as im:
        return im.size


def read_image(path: str, source: str | None = None):
    """The RGB PIL image at ``path`` (EXIF orientation applied); DragBenchError naming ``source`` for a
    file that is not a readable image or has more than MAX_IMAGE_PIXELS (from its header, before
    decoding)."""
    from PIL import ImageOps

    source = path if source is None else source
    with _open_image(path, source) as im:
        try:
            return ImageOps.exif_transpose(im).convert("RGB")
        except MemoryError:
            raise DragBenchError(f"{source}: the image needs more memory than is available") from None
        except Exception as e:
            raise DragBenchError(f"{source}: not a readable image ({_why(e, path, source)})") from None


def check_sample(meta: DragBenchMeta, width: int, height: int, source: str) -> None:
    """Points inside the image and a mask of the image's size, else DragBenchError naming ``source``."""
    for k, (x, y) in enumerate(meta.points):
        if not (0 <= x < width and 0 <= y < height):
            kind = "handle" if k % 2 == 0 else "target"
            raise DragBenchError(f"{source}: {kind} {k // 2} ({x:g}, {y:g}) is outside the {width}x{height} "
                                 "image")
    if meta.mask is not None and meta.mask.shape != (height, width):
        raise DragBenchError(f"{source}: mask is {meta.mask.shape[1]}x{meta.mask.shape[0]} but the image is "
                             f"{width}x{height}")


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class SampleRef:
    category: str
    name: str
    path: str  # the sample folder
    shown: str = ""  # how messages name the sample folder (default: path)

    @property
    def key(self) -> str:
        return f"{self.category}/{self.name}"

    @property
    def image_path(self) -> str:
        return os.path.join(self.path, IMAGE_FILE)

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, META_FILE)

    def show(self, file: str) -> str:
        """``file`` of this sample as messages name it."""
        return f"{self.shown}/{file}" if self.shown else os.path.join(self.path, file)


def _category_order(name: str):
    return (0, OFFICIAL_CATEGORIES.index(name), name) if name in OFFICIAL_CATEGORIES else (1, 0, name)


def is_inside(path: str, within: str) -> bool:
    """Whether ``path``, all links resolved, is ``within`` (also resolved) or below it."""
    real, base = os.path.realpath(path), os.path.realpath(within)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def list_samples(root: str, shown: str | None = None, within: str | None = None) -> list[SampleRef]:
    """Every sample folder of a DragBench root, in the official category order then by name.

    A sample folder is any folder inside a category folder that has ``original_image.png`` or
    ``meta_data.pkl`` (hidden entries such as ``.DS_Store`` are skipped). ``shown``: how messages
    name ``root`` (default: the path). ``within``: a folder that ``root`` must resolve into (links
    followed); category folders that link out of it are not listed, and :func:`load_sample` refuses
    sample folders and files that do."""
    shown = root if shown is None else shown
    if within is not None and not is_inside(root, within):
        raise DragBenchError(f"{shown}: is a link to a folder outside the allowed folder; refused")
    if not os.path.isdir(root):
        raise DragBenchError(f"{shown}: no such DragBench folder")
    samples = []
    try:
        cats = [c for c in os.listdir(root) if not c.startswith(".") and os.path.isdir(os.path.join(root, c))
                and (within is None or is_inside(os.path.join(root, c), within))]
        for cat in sorted(cats, key=_category_order):
            cdir = os.path.join(root, cat)
            for name in sorted(os.listdir(cdir)):
                sdir = os.path.join(cdir, name)
                if name.startswith(".") or not os.path.isdir(sdir):
                    continue
                if os.path.lexists(os.path.join(sdir, IMAGE_FILE)) or os.path.lexists(os.path.join(sdir, META_FILE)):
                    samples.append(SampleRef(cat, name, sdir, f"{shown.rstrip('/')}/{cat}/{name}"))
    except OSError as e:
        raise DragBenchError(f"{shown}: cannot list ({e.strerror or type(e).__name__})") from None
    if not samples:
        raise DragBenchError(f"{shown}: no DragBench samples (<category>/<sample>/{IMAGE_FILE} + {META_FILE})")
    return samples


def load_sample(ref: SampleRef, within: str | None = None):
    """(RGB PIL image, DragBenchMeta) of a sample, all checked (see the module doc): the image's size
    from its header first, then the metadata against it, then the decoded image. ``within``: a
    folder that the sample folder and both files must resolve into (links followed).
    DragBenchError / UnsafePickleError name the file as ``ref.show`` does."""
    if within is not None:
        for path, file in ((ref.path, ""), (ref.image_path, IMAGE_FILE), (ref.meta_path, META_FILE)):
            if not is_inside(path, within):
                raise DragBenchError(f"{ref.show(file).rstrip('/')}: is a link to a file outside the allowed "
                                     "folder; refused")
    size = image_size(ref.image_path, ref.show(IMAGE_FILE))
    meta = read_meta(ref.meta_path, ref.show(META_FILE), size)
    img = read_image(ref.image_path, ref.show(IMAGE_FILE))
    check_sample(meta, img.size[0], img.size[1], ref.show(META_FILE))
    return img, meta


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
        raise DragBenchError(f"sample name {short_repr(key)} is in several categories ({', '.join(s.category for s in hits)}); "
                             "give category/sample")
    raise DragBenchError(f"no sample {short_repr(key)}; give an index (0-{len(samples) - 1}), category/sample or a sample "
                         f"name such as {samples[0].key!r}")


def result_dir(out: str, ref: SampleRef) -> str:
    """``<out>/<category>/<sample>``: the official results layout."""
    return os.path.join(out, ref.category, ref.name)


# ------------------------------------------------------------------------------------------ summary
SUMMARY_KEYS = ("md", "if", "seconds_per_image", "seconds_per_point", "n_samples", "n_points", "n_md", "n_if")


def _aggregate(records: list[dict]) -> dict:
    """MD = mean over all points (the official mean over the 349 pairs), IF = mean over images,
    seconds per image = mean edit time, seconds per point = total edit time / points. A record
    without MD (``distances`` None) or IF (``if`` None) or time (``seconds`` None) is left out of
    that mean only; ``n_md`` / ``n_if`` count the samples each mean is over."""
    with_md = [r for r in records if r.get("distances") is not None]
    with_if = [r for r in records if r.get("if") is not None]
    dists = [d for r in with_md for d in r["distances"]]
    timed = [r for r in records if r.get("seconds") is not None]
    secs = [r["seconds"] for r in timed]
    timed_points = sum(r["n_points"] for r in timed)
    return {
        "md": float(np.mean(dists)) if dists else None,
        "if": float(np.mean([r["if"] for r in with_if])) if with_if else None,
        "seconds_per_image": float(np.mean(secs)) if secs else None,
        "seconds_per_point": float(sum(secs)) / timed_points if secs and timed_points else None,
        "n_samples": len(records),
        "n_points": sum(r["n_points"] for r in records),
        "n_md": len(with_md),
        "n_if": len(with_if),
    }


def summarize(records: list[dict], failed: list[dict], run: dict | None = None,
              not_run: list[dict] | None = None) -> dict:
    """The run summary (``summary.json``).

    Args:
        records: per sample ``{"category", "sample", "distances": [px, ...] or None, "if": float or None,
            "seconds": float or None, "n_points", "missing": {metric: reason}}`` (None = not measured;
            ``missing`` says why).
        failed: ``[{"sample": "category/sample", "error": str, "kind": "data" | ...}]``; ``kind`` "data"
            (the sample's own files were refused) is the only kind a complete run may have.
        run: settings of the run, stored under ``"run"``.
        not_run: ``[{"sample", "reason"}]`` selected samples the run never got to.

    ``complete`` is true when every selected sample has an edit and every metric it was asked for,
    or was refused for its own data.
    """
    cats = sorted({r["category"] for r in records}, key=_category_order)
    missing = [{"sample": r["sample"], "metric": m, "reason": why}
               for r in records for m, why in sorted((r.get("missing") or {}).items())]
    not_run = list(not_run or ())
    out = {"overall": _aggregate(records),
           "categories": {c: _aggregate([r for r in records if r["category"] == c]) for c in cats},
           "failed": [{"sample": f["sample"], "error": f["error"], "kind": f.get("kind", "data")} for f in failed],
           "missing_metrics": missing,
           "not_run": not_run,
           "complete": not missing and not not_run and all(f.get("kind", "data") == "data" for f in failed)}
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
    lines += _problems(summary, "  ")
    return "\n".join(lines)


def _problems(summary: dict, indent: str) -> list[str]:
    """Failed, unmeasured and never-run samples, one line each (for the table and summary.md)."""
    lines = []
    if summary.get("failed"):
        lines.append(f"failed: {len(summary['failed'])} sample(s)")
        lines += [f"{indent}{f['sample']} ({f.get('kind', 'data')}): {f['error']}" for f in summary["failed"]]
    if summary.get("missing_metrics"):
        lines.append(f"missing metrics: {len(summary['missing_metrics'])}")
        lines += [f"{indent}{m['sample']}: no {m['metric'].upper()} ({m['reason']})"
                  for m in summary["missing_metrics"]]
    if summary.get("not_run"):
        lines.append(f"not run: {len(summary['not_run'])} sample(s)")
        lines += [f"{indent}{m['sample']}: {m['reason']}" for m in summary["not_run"]]
    if not summary.get("complete", True):
        lines.append("INCOMPLETE: the table covers only the samples above it; see failed / missing / not run")
    return lines


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
    problems = _problems(summary, "- ")
    if problems:
        lines += ["", "## Not measured", ""] + [p if p.startswith("- ") else f"**{p}**" for p in problems]
    if sheets:
        lines += ["", "## Contact sheets", ""]
        lines += [f"- {cat}: [{path}]({path})" for cat, path in sheets.items()]
    return "\n".join(lines) + "\n"
