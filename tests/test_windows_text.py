"""Windows: every string the pack can show (console, log file, node text, error message, editor) must
be encodable in cp1252, the code page of the Windows portable build's console and log files; the
paper's symbols stay welcome in docstrings and comments. And the product path builds paths with
``os.path`` and calls no shell.

The Python check reads the string literals of the code (``ast``; f-string pieces included, docstrings
excluded); the JavaScript check reads everything in ``web/js`` that is not a comment (string and
template literals, and the code around them).
"""

from __future__ import annotations

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = ["__init__.py", "nodes", "fastdrag_core"]
PYTHON = PRODUCT + ["benchmarks"]


def python_files(parts) -> list[str]:
    out = []
    for part in parts:
        path = os.path.join(ROOT, part)
        out += [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "**", "*.py"), recursive=True))
    return out


def docstring_nodes(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def not_cp1252(text: str) -> list[str]:
    """The characters of ``text`` that cp1252 cannot encode (empty list if none)."""
    bad = []
    for ch in text:
        try:
            ch.encode("cp1252")
        except UnicodeEncodeError:
            bad.append(ch)
    return bad


def python_offenders(source: str, name: str) -> list[str]:
    tree = ast.parse(source)
    docs = docstring_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            bad = not_cp1252(node.value)
            if bad:
                out.append(f"{name}:{node.lineno}: {''.join(sorted(set(bad)))!r} in {node.value[:60]!r}")
    return out


REGEX_BEFORE = set("(,=:[!&|?{};+-*%<>~^")


def js_code_without_comments(src: str) -> str:
    """``src`` with its // and /* */ comments removed; string, template and regex literals kept whole
    (a ``//`` inside them is not a comment). A ``/`` starts a regex literal after an operator, an opening
    bracket or ``return``; else it is a division."""
    out, i, n = [], 0, len(src)
    last = ""  # last significant character of code
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`" or (c == "/" and (last in REGEX_BEFORE or last == "" or src[:i].rstrip().endswith("return"))):
            j = i + 1
            in_class = False
            while j < n:
                if src[j] == "\\":
                    j += 2
                    continue
                if c == "/" and src[j] == "[":
                    in_class = True
                elif c == "/" and src[j] == "]":
                    in_class = False
                elif src[j] == c and not in_class:
                    break
                elif src[j] == "\n" and c in "'\"/":
                    raise ValueError(f"unterminated literal at offset {i}: {src[i:i + 40]!r}")
                j += 1
            out.append(src[i:j + 1])
            last = c
            i = j + 1
        else:
            out.append(c)
            if not c.isspace():
                last = c
            i += 1
    return "".join(out)


def js_offenders(source: str, name: str) -> list[str]:
    code = js_code_without_comments(source)
    out = []
    for no, line in enumerate(code.splitlines(), 1):
        bad = not_cp1252(line)
        if bad:
            out.append(f"{name}: {''.join(sorted(set(bad)))!r} in {line.strip()[:80]!r}")
    return out


def test_the_checks_catch_what_they_should():
    """Hand-made cases: the checks find a non-cp1252 character in a string, an f-string piece and a JS
    string or template literal, and ignore docstrings, comments and cp1252 characters (en dash, x)."""
    py = ('"""Docstring with \u03c3_t and \u03b5."""\n'
          'def f(x):\n    """z \u2190 z \u2212 \u03b7\u2207 (fine here)"""\n    # comment: \u2207\n'
          '    a = "1 – 2 × 3"\n    b = f"{x} \u2192 y"\n    return "\u1fb1_t"\n')
    assert sorted(o.split(":")[1] for o in python_offenders(py, "case.py")) == ["6", "7"]
    js = ('// \u03b1 comment\nconst a = "fine – ok"; /* \u03a3 */\nconst b = `${a} \u2192 b`;\n'
          'const r = /\\/\\/ no comment/g; const d = 4 / 2; // \u2207\nconst u = "http://x"; const s = \'\u03c3\';\n')
    code = js_code_without_comments(js)
    assert "http://x" in code and "no comment" in code and "\u03b1" not in code and "\u2207" not in code
    found = js_offenders(js, "case.js")
    assert len(found) == 2 and "\u2192" in found[0] and "\u03c3" in found[1], found


@pytest.mark.parametrize("path", python_files(PYTHON), ids=lambda p: os.path.relpath(p, ROOT))
def test_python_strings_are_cp1252(path):
    with open(path, encoding="utf-8") as f:
        offenders = python_offenders(f.read(), os.path.relpath(path, ROOT))
    assert not offenders, "strings a Windows console/log cannot show:\n" + "\n".join(offenders)


def test_javascript_text_is_cp1252():
    files = sorted(glob.glob(os.path.join(ROOT, "web", "js", "*.js")))
    assert files
    offenders = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            offenders += js_offenders(f.read(), os.path.relpath(path, ROOT))
    assert not offenders, "editor text a Windows ComfyUI may not show:\n" + "\n".join(offenders)


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "fork"), ("os", "spawnl"), ("os", "execv"),
               ("os", "getuid"), ("os", "chown"), ("os", "symlink")}
POSIX_MODULES = {"subprocess", "pty", "fcntl", "termios", "pwd", "grp", "resource", "posix", "shlex"}


def test_the_product_path_calls_no_shell_and_no_posix_only_api():
    """nodes/, fastdrag_core/ and the entry point: no subprocess or shell, no POSIX-only module or call
    (paths come from os.path.join, which gives Windows separators there)."""
    offenders = []
    for path in python_files(PRODUCT):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        rel = os.path.relpath(path, ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offenders += [f"{rel}:{node.lineno}: import {a.name}" for a in node.names
                              if a.name.split(".")[0] in POSIX_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_MODULES:
                offenders.append(f"{rel}:{node.lineno}: from {node.module} import")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and (node.value.id, node.attr) in SHELL_CALLS:
                offenders.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.keyword) and node.arg == "shell":
                offenders.append(f"{rel}:{node.lineno}: shell=")
    assert not offenders, "\n".join(offenders)
