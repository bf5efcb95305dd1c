"""A corpus of hostile DragBench samples (``meta_data.pkl`` + ``original_image.png``), made here.

Every pickle is assembled opcode by opcode from only the globals DragBench's restricted unpickler
admits (``numpy.dtype``, ``numpy.ndarray``, numpy's ``_reconstruct`` / ``_frombuffer`` / ``scalar``,
``_codecs.encode``), plus a few with other globals: forged object pointers behind a dtype whose
flags deny holding objects, structured / void / subarray / datetime / string / complex dtypes,
arrays whose declared size disagrees with their bytes, size bombs, deep and exponential nesting,
truncation and junk; and images that are junk, truncated or claim huge sizes in their header.

Used by the unit tests (the pure parser), by the DragBenchSample node in the real server and by
the DragBench runner. No ComfyUI import.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np

W, H = 32, 32  # the size of every valid image here


# ------------------------------------------------------------------------------- a pickle assembler
class G:
    """A global (module.name): the GLOBAL opcode."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """``f(*args)``: REDUCE."""

    def __init__(self, f, *args):
        self.f, self.args = f, args


class Build:
    """``obj.__setstate__(state)``: BUILD."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Put:
    """``obj``, remembered in memo slot ``k`` (BINPUT)."""

    def __init__(self, k, obj):
        self.k, self.obj = k, obj


class Get:
    """Memo slot ``k`` again (BINGET): the same object, two bytes."""

    def __init__(self, k):
        self.k = k


class Repeat:
    """A list of ``n`` references to one object (``n`` x 2 bytes)."""

    def __init__(self, item, n, slot=250):
        self.item, self.n, self.slot = item, n, slot


class _Raw:
    """Opcodes written out (nesting far deeper than a recursive emitter could go)."""

    def __init__(self, data):
        self.data = data


def emit(x) -> bytes:
    if isinstance(x, _Raw):
        return x.data
    if x is None:
        return b"N"
    if x is True:
        return b"\x88"
    if x is False:
        return b"\x89"
    if isinstance(x, int):
        return b"I" + str(x).encode() + b"\n"
    if isinstance(x, float):
        return b"F" + repr(x).encode() + b"\n"
    if isinstance(x, str):
        data = x.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(x, (bytes, bytearray)):
        return b"B" + struct.pack("<I", len(x)) + bytes(x)
    if isinstance(x, tuple):
        return b"(" + b"".join(map(emit, x)) + b"t"
    if isinstance(x, list):
        return b"(" + b"".join(map(emit, x)) + b"l"
    if isinstance(x, dict):
        return b"(" + b"".join(emit(k) + emit(v) for k, v in x.items()) + b"d"
    if isinstance(x, G):
        return b"c" + x.module.encode() + b"\n" + x.name.encode() + b"\n"
    if isinstance(x, Call):
        return emit(x.f) + emit(tuple(x.args)) + b"R"
    if isinstance(x, Build):
        return emit(x.obj) + emit(x.state) + b"b"
    if isinstance(x, Put):
        return emit(x.obj) + b"q" + bytes([x.k])
    if isinstance(x, Get):
        return b"h" + bytes([x.k])
    if isinstance(x, Repeat):
        return b"](" + emit(x.item) + b"q" + bytes([x.slot]) + (b"h" + bytes([x.slot])) * (x.n - 1) + b"e"
    raise TypeError(type(x))


def assemble(x) -> bytes:
    return b"\x80\x02" + emit(x) + b"."


NP = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
NUMERIC = NP.replace("multiarray", "numeric")


def dtype(spec, state=(3, "<", None, None, None, -1, -1, 0)):
    """``numpy.dtype(spec, False, True)`` with the state numpy's ``__setstate__`` gets (flags last)."""
    d = Call(G("numpy", "dtype"), spec, False, True)
    return d if state is None else Build(d, state)


def ndarray(shape, dt, raw, fortran=False):
    """An ndarray as protocol 2 pickles one: ``_reconstruct`` then ``__setstate__``."""
    return Build(Call(G(NP, "_reconstruct"), G("numpy", "ndarray"), (0,), b"b"), (1, tuple(shape), dt, fortran, raw))


def meta(points=((4, 4), (8, 8)), mask=None, prompt="hostile", **extra):
    """A DragBench metadata dict for assemble() (points as given, mask None = not stored)."""
    d = {"prompt": prompt, "points": points if not isinstance(points, tuple) else list(points)}
    if mask is not None:
        d["mask"] = mask
    d.update(extra)
    return d


FORGED = struct.pack("<Q", 0x4141414141414141)  # an "object pointer" that points nowhere


def nested(depth, leaf=1, kind=list):
    """``depth`` levels of one-element lists (or tuples) as opcodes: no Python recursion here."""
    opener, closer = (b"(", b"l") if kind is list else (b"(", b"t")
    return _Raw(opener * depth + emit(leaf) + closer * depth)


def laughs(depth):
    """A pair of pairs of ... (``depth`` levels, each a list [L, L] of the level below): 2^depth leaves
    walked by repr / tolist, ~10 bytes per level on disk."""
    out = emit(1.0) + b"q\x000"
    for k in range(depth):
        out += b"(h" + bytes([k]) + b"h" + bytes([k]) + b"lq" + bytes([k + 1]) + b"0"
    return _Raw(out + b"h" + bytes([depth]))


# ------------------------------------------------------------------------------------------ images
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w, h) -> bytes:
    """A PNG that claims ``w`` x ``h`` (8-bit RGB) with one tiny, short IDAT: a decompression bomb's header."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def good_png(w=W, h=H) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(w * 7 + h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class Case:
    name: str      # also the sample folder name
    meta: bytes | None   # None = no meta_data.pkl
    image: bytes | None  # None = no original_image.png
    expect: str    # a lowercase fragment the refusal must contain
    file: str = "meta_data.pkl"  # the file the refusal must name


def _cases():
    u1 = dtype("u1", (3, "|", None, None, None, -1, -1, 0))
    f8 = dtype("f8")
    obj_noflags = dtype("O8", (3, "|", None, None, None, -1, -1, 0))    # object dtype, flags forged to 0
    obj = dtype("O8", (3, "|", None, None, None, -1, -1, 63))
    struct_obj = dtype("V8", (3, "|", None, ("a",), {"a": (obj_noflags, 0)}, 8, 1, 0))
    struct_f = dtype("V8", (3, "|", None, ("a", "b"), {"a": (f8, 0), "b": (f8, 0)}, 8, 1, 0))
    subarray = dtype("V16", (3, "|", (f8, (2,)), None, None, 16, 8, 0))
    void = dtype("V8", (3, "|", None, None, None, 8, 1, 0))
    void0 = dtype("V0", (3, "|", None, None, None, 0, 1, 0))
    dt64 = dtype("M8", (4, "<", None, None, None, -1, -1, 0, (None, (b"s", 1, 1, 1))))
    s3 = dtype("S3", (3, "|", None, None, None, 3, 1, 0))
    u2 = dtype("U2", (3, "<", None, None, None, 8, 4, 8))
    c8 = dtype("c8")
    good_mask = np.zeros((H, W), np.uint8).tobytes()
    pts_shape = (2, 2)
    c = []

    def add(name, obj, expect, image=True, raw=False, file="meta_data.pkl"):
        c.append(Case(name, obj if raw else assemble(obj), good_png() if image is True else image, expect, file))

    # forged pointers and dtypes that can hold Python objects or are not plain numbers
    add("forged_pointer_points", meta(points=ndarray((2, 2), obj_noflags, FORGED * 4)), "dtype o8")
    add("forged_pointer_point", meta(points=[ndarray((2,), obj_noflags, FORGED * 2), (8, 8)]), "dtype o8")
    add("forged_pointer_mask", meta(mask=ndarray((H, W), obj_noflags, FORGED * (H * W))), "dtype o8")
    add("object_array_points", meta(points=ndarray(pts_shape, obj, [1, 2, 3, 4])), "dtype o8")
    add("structured_object_points", meta(points=ndarray((2,), struct_obj, FORGED * 2)), "dtype v8")
    add("structured_float_mask", meta(mask=ndarray((H, W), struct_f, b"\0" * (H * W * 8))), "dtype v8")
    add("subarray_points", meta(points=ndarray((2,), subarray, b"\0" * 32)), "dtype v16")
    add("void_mask", meta(mask=ndarray((H, W), void, b"\0" * (H * W * 8))), "dtype v8")
    add("void0_stride0_mask", meta(mask=ndarray((50000, 50000), void0, b"")), "dtype v0")
    add("datetime_points", meta(points=ndarray(pts_shape, dt64, b"\0" * 32)), "dtype m8")
    add("bytes_points", meta(points=ndarray(pts_shape, s3, b"abc" * 4)), "dtype s3")
    add("unicode_mask", meta(mask=ndarray((H, W), u2, b"\0" * (H * W * 8))), "dtype u2")
    add("complex_points", meta(points=ndarray(pts_shape, c8, b"\0" * 32)), "dtype c8")
    add("complex_mask", meta(mask=ndarray((H, W), c8, b"\0" * (H * W * 8))), "dtype c8")
    add("frombuffer_object", meta(points=Call(G(NUMERIC, "_frombuffer"), FORGED * 4, obj_noflags, (2, 2), "C")),
        "dtype o8")
    add("scalar_object", meta(points=[(Call(G(NP, "scalar"), obj_noflags, FORGED), 1), (8, 8)]), "numpy scalar")
    add("scalar_short_bytes", meta(points=[(Call(G(NP, "scalar"), f8, b"\0\0"), 1), (8, 8)]), "numpy scalar")
    add("dtype_without_state_object", meta(points=ndarray(pts_shape, dtype("O8", None), FORGED * 4)), "dtype o8")
    add("dtype_bad_flags_float", meta(points=ndarray(pts_shape, dtype("f8", (3, "<", None, None, None, -1, -1, 1)),
                                                     b"\0" * 32)), "only bool, integer and float")
    add("reconstruct_not_ndarray", meta(points=Call(G(NP, "_reconstruct"), G("numpy", "dtype"), (0,), b"b")),
        "not a readable pickle")
    # declared size vs bytes
    add("mask_50000sq_no_bytes", meta(mask=ndarray((50000, 50000), u1, b"")), "50000x50000")
    add("mask_1e12_claim", meta(mask=ndarray((10**6, 10**6), f8, b"")), "larger than any dragbench image")
    add("mask_huge_dims", meta(mask=ndarray((10**40, 0), u1, b"")), "mask is 0x(huge)")
    add("mask_negative_dim", meta(mask=ndarray((-1, W), u1, b"")), "malformed shape")
    add("mask_short_bytes", meta(mask=ndarray((H, W), u1, good_mask[:-1])), "needs 1024 bytes")
    add("mask_extra_bytes", meta(mask=ndarray((H, W), u1, good_mask + b"\0")), "needs 1024 bytes")
    add("mask_wrong_size", meta(mask=ndarray((H * 2, W), u1, good_mask * 2)), "mask is 32x64")
    add("mask_1d", meta(mask=ndarray((H * W,), u1, good_mask)), "h x w")
    add("mask_5d", meta(mask=ndarray((1, 1, 1, H, W), u1, good_mask)), "malformed shape")
    add("mask_list", meta(mask=[[1] * W] * H), "h x w")
    add("points_array_1e12", meta(points=ndarray((10**12, 2), f8, b"")), "drags, at most 32")
    add("points_40000", meta(points=Repeat((4, 4), 40_000)), "20000 drags, at most 32")
    add("point_with_50000_values", meta(points=[Repeat(1, 50_000), (8, 8)]), "point 0 must be")
    add("points_nan", meta(points=[(4, float("nan")), (8, 8)]), "point 0 must be")
    add("points_inf", meta(points=[(4, 4), (float("inf"), 8)]), "point 1 must be")
    add("points_bool", meta(points=[(True, False), (8, 8)]), "point 0 must be")
    add("points_str", meta(points=[("4", "4"), (8, 8)]), "point 0 must be")
    add("points_odd", meta(points=[(4, 4)]), "got 1")
    add("points_none", meta(points=None), "got none")
    add("points_outside", meta(points=[(4, 4), (W + 5, 8)]), "outside the 32x32 image")
    add("points_bigint", meta(points=[(10**400, 4), (8, 8)]), "point 0 must be")
    # nesting and structure
    add("deep_nested_point", meta(points=[nested(40_000), (8, 8)]), "point 0 must be")
    add("deep_nested_key", {"prompt": "x", nested(40_000, kind=tuple): 1}, "dict key or set item")
    add("deep_tuple1_key", {"prompt": "x", "points": [(4, 4), (8, 8)], _Raw(emit(1) + b"\x85" * 90_000): 1},
        "dict key or set item")
    add("deep_key_in_frozenset", meta(extra=_Raw(b"\x8f(" + emit(1) + b"\x85" * 90_000 + b"\x90")),
        "dict key or set item")
    add("deep_nested_prompt", meta(prompt=nested(40_000)), "'prompt' must be a string")
    add("laughs_point", meta(points=[laughs(22), (8, 8)]), "point 0 must be")
    add("laughs_extra", meta(extra=laughs(40), points=[(4, 4), (40, 8)]), "outside the 32x32 image")
    add("opcode_flood", b"\x80\x02" + b"N" * 300_000 + b".", "pickle operations", raw=True)
    add("deep_tuple1_300k_key", {"prompt": "x", _Raw(emit(1) + b"\x85" * 300_000): 1}, "pickle operations")
    add("not_a_dict", [1, 2, 3], "expected a dict")
    add("prompt_bytes", meta(prompt=b"abc"), "'prompt' must be a string")
    add("prompt_1e6_chars", meta(prompt="x" * 1_000_000), "at most 4096")
    # other globals, codecs, persistent ids
    add("os_system", meta(mask=Call(G("os", "system"), "true")), "refused to load the global")
    add("eval", meta(prompt=Call(G("builtins", "eval"), "1+1")), "builtins.eval")
    add("numpy_load", meta(mask=Call(G("numpy", "load"), "/etc/passwd")), "numpy.load")
    add("codecs_zlib", meta(prompt=Call(G("_codecs", "encode"), b"x", "zlib")), "not a readable pickle")
    add("persistent_id", b"\x80\x02X\x01\x00\x00\x00aQ.", "persistent id", raw=True)
    # truncation and junk
    whole = assemble(meta(mask=ndarray((H, W), u1, good_mask)))
    add("truncated_half", whole[: len(whole) // 2], "not a readable pickle", raw=True)
    add("truncated_no_stop", whole[:-1], "not a readable pickle", raw=True)
    add("empty_file", b"", "not a readable pickle", raw=True)
    add("junk", bytes(random.Random(13).randrange(256) for _ in range(4096)), "not a readable pickle", raw=True)
    add("text_file", b"prompt: hello\npoints: [1, 2]\n", "not a readable pickle", raw=True)
    add("unknown_opcode", b"\x80\x02\xff.", "not a readable pickle", raw=True)
    add("meta_missing", None, "cannot read", raw=True)
    # images
    ok = assemble(meta())
    add("image_junk", ok, "not a readable image", image=b"\x89PNG\r\n\x1a\njunkjunk", raw=True,
        file="original_image.png")
    add("image_missing", ok, "no such file", image=None, raw=True, file="original_image.png")
    add("image_bomb_100k", ok, "pixels", image=png_header_only(100_000, 100_000), raw=True, file="original_image.png")
    add("image_5000sq", ok, "5000x5000", image=png_header_only(5000, 5000), raw=True, file="original_image.png")
    add("image_truncated", ok, "not a readable image", image=good_png()[:200], raw=True, file="original_image.png")
    add("image_text", ok, "not a readable image", image=b"hello", raw=True, file="original_image.png")
    return c


CASES = _cases()


def write_case(folder: str, case: Case):
    """The case's files in ``folder`` (made)."""
    import os

    os.makedirs(folder, exist_ok=True)
    if case.meta is not None:
        with open(os.path.join(folder, "meta_data.pkl"), "wb") as f:
            f.write(case.meta)
    if case.image is not None:
        with open(os.path.join(folder, "original_image.png"), "wb") as f:
            f.write(case.image)


def write_corpus(root: str, category: str = "hostile", cases=None) -> list[Case]:
    """Every case as ``root/<category>/<case.name>/``; returns the cases."""
    import os

    cases = CASES if cases is None else cases
    for case in cases:
        write_case(os.path.join(root, category, case.name), case)
    return cases


def valid_meta_bytes() -> bytes:
    """A valid sample's metadata for the W x H images here (as the labeling tool pickles it)."""
    mask = np.zeros((H, W), np.uint8)
    mask[4:28, 4:28] = 1
    return pickle.dumps({"prompt": "a valid one", "points": [(4, 4), (8, 8)], "mask": mask})
