#!/usr/bin/env python3
"""DragBench in one command: edit every sample through ComfyUI's HTTP API, then score it.

    python3 benchmarks/dragbench.py --dragbench DIR --method fastdrag --checkpoint NAME --out DIR \\
        [--dift-checkpoint NAME] [--comfyui PATH | --url URL] [--limit N] [--metrics md,if]

For each sample ``DIR/<category>/<sample>/`` (``original_image.png`` + ``meta_data.pkl``, read with a
restricted unpickler that runs no code):

1. the source image and its mask are uploaded to the server and the method's marked workflow
   (``benchmarks/workflows/<method>.json``, or ``--workflow FILE``; see ``marked_workflow.py``)
   edits it; the result goes to ``OUT/<category>/<sample>/dragged_image.png`` (the layout the
   official scripts read) with ``edit.json`` (server seconds, settings);
2. ``DragMeanDistance`` (DIFT on ``--dift-checkpoint``) and ``DragImageFidelity`` (LPIPS) score the
   saved PNG against the source -> ``metrics.json``.

A sample with a result is skipped (and says so), so an interrupted run resumes with the same
command. A sample that fails (an unsafe or malformed file, a node error) is listed in ``failed`` with
its kind and the run goes on; a metric that cannot be computed (``--metrics``; e.g. IF without the
LPIPS AlexNet weights) is marked missing for that sample and the others are still reported. At the
end: a table (overall and per category: MD, IF, seconds per image and per point), ``OUT/summary.json``,
``OUT/summary.md`` and ``OUT/contact_sheets/<category>.png``.

Guarantees: the output folder is checked (a folder, writable, room for the run) before the server is
contacted; ``summary.json`` is rewritten at the start (everything "not run") and on every exit, so an
older one is never left in place, and says ``"complete": false`` with what is missing when the run is
incomplete; the exit status is 0 only for a complete run (samples refused for their own files are
allowed), 1 otherwise (130 on Ctrl-C); an edit that ComfyUI answers from its cache is run again under
a fresh upload name, and its time is reported only from a run that really edited.

The server: ``--url`` of a running ComfyUI with this pack, or one started headless from
``--comfyui`` (default ``COMFYUI_ROOT``) in a temporary run folder (this pack linked in, the
checkout's model folders visible; ``--checkpoint`` may then also be a file path).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import comfy_client  # noqa: E402
import marked_workflow as mw  # noqa: E402

db = comfy_client.pure_core("dragbench")  # fastdrag_core/dragbench.py without importing torch

METHODS = {"fastdrag": os.path.join(HERE, "workflows", "fastdrag.json"),
           "dragdiffusion": os.path.join(HERE, "workflows", "dragdiffusion.json")}
PER_SAMPLE_MARKS = ("image", "mask", "points", "prompt", "checkpoint", "output")
METRICS = {"md": ("DragMeanDistance", "LoadImage", "CheckpointLoaderSimple"), "if": ("DragImageFidelity", "LoadImage")}
BYTES_PER_SAMPLE = 2 << 20  # a result PNG, its JSON files and its contact-sheet row, generously


def log(msg: str = ""):
    print(msg, flush=True)


def fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class OutputError(Exception):
    """The output folder cannot take the results (a file, read-only, full): the run cannot go on."""


class ServerGone(Exception):
    """The server stopped answering: the samples left cannot be edited."""


def write_atomic(path: str, data: bytes):
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def check_out_dir(out: str, need_bytes: int):
    """Before any work: ``out`` is (or can be made) a folder we can write into with ``need_bytes`` free."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".dragbench_probe_{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write into --out {out}: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise OutputError(f"--out {out} has {free >> 20} MiB free; this run needs about {need_bytes >> 20} MiB")


def write_json(path: str, obj):
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------ server
RUNNER_CACHE = ("--cache-lru", "32")


def server_args(comfy_args) -> list:
    """main.py arguments of the runner's own server: the user's ``--comfy-arg``s, and, unless they pick
    a cache mode, an LRU node cache. ComfyUI's default cache keeps only the last prompt's nodes, and the
    runner alternates edit and metric prompts, so the edit's and DIFT's checkpoint loaders would load
    their models again for every sample."""
    args = list(comfy_args or ())
    if not any(a.split("=")[0] in ("--cache-lru", "--cache-none", "--cache-ram", "--cache-classic") for a in args):
        args += RUNNER_CACHE
    return args


def connect(args):
    """(client, process or None): the --url server, or one started from --comfyui."""
    if args.url:
        client = comfy_client.ComfyClient(args.url)
        if not client.ready():
            sys.exit(f"dragbench: no ComfyUI answers at {args.url}")
        return client, None
    root, reason = comfy_client.find_comfyui(args.comfyui)  # --comfyui, COMFYUI_ROOT, ..., the harness's
    if root is None:
        sys.exit(f"dragbench: {reason}")
    log(f"starting ComfyUI from {root} ...")
    proc = comfy_client.ComfyProcess(root, python=args.python, cpu={"auto": None, "cpu": True, "gpu": False}[args.device],
                                     extra_args=server_args(args.comfy_arg))
    try:
        proc.wait_ready()
    except (RuntimeError, TimeoutError) as e:
        proc.cleanup()
        sys.exit(f"dragbench: ComfyUI did not start: {e}")
    log(f"ComfyUI ready at {proc.url} (run folder {proc.base}, log {proc.log_path})")
    return proc, proc


def resolve_checkpoint(client, proc, name: str, what: str) -> str:
    """A checkpoint name the server lists; a file path is linked into our own run folder."""
    if os.path.isfile(name):
        if proc is None:
            sys.exit(f"dragbench: {what} {name!r} is a file, but the server at --url cannot see this machine's "
                     "files: put it in that ComfyUI's models/checkpoints and give its name")
        name = proc.link_checkpoint(name)
    info = client.get("/object_info/CheckpointLoaderSimple")
    choices = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    choices = choices if isinstance(choices, list) else []
    if choices and name not in choices:
        shown = ", ".join(choices[:20]) + (" ..." if len(choices) > 20 else "")
        sys.exit(f"dragbench: {what} {name!r} is not in the server's checkpoints ({shown or 'none'})")
    return name


def check_nodes(client, needed, what: str):
    missing = sorted(c for c in set(needed) if not client.has_node(c))
    if missing:
        hint = (" (is comfyui-fastdrag 0.2.0 or newer loaded on that server? see its log)" if "DragDiffusionEdit" in missing
                else " (is the comfyui-fastdrag pack loaded? see the server log)")
        sys.exit(f"dragbench: the server has no {', '.join(missing)} node{'s' if len(missing) > 1 else ''} "
                 f"needed by {what}{hint}")


# ------------------------------------------------------------------------------------ samples
def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_sample(ref):
    """(PIL RGB image, DragBenchMeta), every check of fastdrag_core.dragbench.load_sample;
    DragBenchError / UnsafePickleError name the file."""
    return db.load_sample(ref)


def mask_png(meta, size) -> bytes:
    from PIL import Image
    import numpy as np

    if meta.mask is None:
        return png_bytes(Image.new("L", size, 255))
    return png_bytes(Image.fromarray(meta.mask.astype(np.uint8) * 255, mode="L"))


def upload_sample(client, ref, img, meta, fresh: str = "") -> tuple[str, str]:
    """Uploads the source and its mask; ``fresh``: a subfolder that gives them names ComfyUI has not
    seen (its cache keys include LoadImage's file name)."""
    sub = f"dragbench/{ref.category}/{ref.name}" + (f"/{fresh}" if fresh else "")
    image = client.upload_image(png_bytes(img), db.IMAGE_FILE, sub)
    mask = client.upload_image(mask_png(meta, img.size), "mask.png", sub)
    return image, mask


def metrics_prompt(dift_ckpt, source, edited, points, prompt, ensemble, seed) -> dict:
    """MD and IF in one prompt (for callers that want both or nothing); the runner sends each alone."""
    return {**md_prompt(dift_ckpt, source, edited, points, prompt, ensemble, seed), **if_prompt(source, edited)}


def md_prompt(dift_ckpt, source, edited, points, prompt, ensemble, seed) -> dict:
    return {
        "dift": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": dift_ckpt}},
        "src": {"class_type": "LoadImage", "inputs": {"image": source}},
        "edt": {"class_type": "LoadImage", "inputs": {"image": edited}},
        "md": {"class_type": "DragMeanDistance", "inputs": {
            "model": ["dift", 0], "clip": ["dift", 1], "vae": ["dift", 2], "source": ["src", 0], "edited": ["edt", 0],
            "points": points, "prompt": prompt, "ensemble": ensemble, "seed": seed}},
    }


def if_prompt(source, edited) -> dict:
    return {
        "src": {"class_type": "LoadImage", "inputs": {"image": source}},
        "edt": {"class_type": "LoadImage", "inputs": {"image": edited}},
        "if": {"class_type": "DragImageFidelity", "inputs": {"source": ["src", 0], "edited": ["edt", 0]}},
    }


def metric_value(entry, node) -> dict:
    vals = entry.get("outputs", {}).get(node, {}).get("dragbench") or []
    if not vals:
        raise RuntimeError(f"{node} sent no values (outputs: {list(entry.get('outputs', {}))})")
    return vals[0]


def sample_nodes(prompt: dict) -> set[str]:
    """Ids of the nodes whose result depends on the sample's image, mask or points: those with such a
    mark in an input, and every node downstream of one. Only these must not come from ComfyUI's cache
    in a timed edit (a cached checkpoint loader, or the text encoding of a prompt that an earlier
    sample had too, is what a warm server is for)."""
    marks = {"{{image}}", "{{mask}}", "{{points}}"}
    dep = {nid for nid, node in prompt.items()
           if any(isinstance(v, str) and any(m in v for m in marks) for v in node.get("inputs", {}).values())}
    grew = True
    while grew:
        grew = False
        for nid, node in prompt.items():
            if nid not in dep and any(isinstance(v, list) and v and str(v[0]) in dep
                                      for v in node.get("inputs", {}).values()):
                dep.add(nid)
                grew = True
    return dep


def cached_nodes(entry: dict) -> set[str]:
    """Ids of the nodes ComfyUI answered from its cache in a finished prompt (``execution_cached``)."""
    out = set()
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_cached":
            out.update(str(n) for n in data.get("nodes", []))
    return out


def short(e: BaseException, limit: int = 300) -> str:
    """An error's message on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, args, client, proc):
        self.args, self.client, self.proc = args, client, proc
        self.out = os.path.abspath(args.out)
        wf_path = args.workflow or METHODS[args.method]
        self.workflow, defaults, self.description = mw.load_workflow(wf_path)
        self.settings = {**defaults, **mw.parse_set(args.set)}
        unfilled = sorted(mw.placeholders(self.workflow) - set(self.settings) - set(PER_SAMPLE_MARKS))
        if unfilled:
            raise mw.WorkflowError(f"{wf_path}: no value for {', '.join('{{' + m + '}}' for m in unfilled)}; give it "
                                   f"with --set {unfilled[0]}=VALUE or in the workflow's _marks.defaults")
        self.method = args.method if not args.workflow else f"workflow:{os.path.basename(args.workflow)}"
        self.workflow_path = wf_path
        self.sample_nodes = sample_nodes(self.workflow)
        self.edit_id = {"method": self.method, "checkpoint": args.checkpoint, "settings": self.settings}
        self.metric_id = {"dift_checkpoint": args.dift_checkpoint, "ensemble": args.ensemble, "seed": args.seed}
        self.records, self.failed, self.not_run = [], [], []
        self.times = []

    def check_existing(self, path, wanted, what):
        """An earlier result made with other settings must not be mixed in silently."""
        got = read_json(path)
        if got is None:
            return False
        got_id = {k: got.get(k) for k in wanted}
        if got_id != wanted:
            raise SystemExit(f"dragbench: {path} was made with {json.dumps(got_id)}, this run uses "
                             f"{json.dumps(wanted)}; use another --out (or delete the old {what})")
        return True

    def fail(self, ref, kind, msg, tag):
        self.failed.append({"sample": ref.key, "error": msg, "kind": kind})
        log(f"{tag}: FAILED ({kind}) {msg}")

    def edit(self, ref, img, meta, src_name, mask_name, tag):
        """(PNG bytes, server seconds or None, note): the edit, never a cached answer timed as an edit."""
        values = {**self.settings, "image": src_name, "mask": mask_name, "points": meta.points_json(*img.size),
                  "prompt": meta.prompt, "checkpoint": self.args.checkpoint,
                  "output": f"dragbench/{ref.category}/{ref.name}/dragged"}
        data, secs, entry = mw.run_edit(self.client, self.workflow, values, timeout=self.args.timeout)
        if not cached_nodes(entry) & self.sample_nodes:
            return data, secs, None
        log(f"{tag}: ComfyUI answered the edit from its cache; editing again under a fresh upload name")
        values["image"], values["mask"] = upload_sample(self.client, ref, img, meta,
                                                        fresh=f"run-{uuid.uuid4().hex[:8]}")
        data, secs, entry = mw.run_edit(self.client, self.workflow, values, timeout=self.args.timeout)
        if cached_nodes(entry) & self.sample_nodes:
            return data, None, "answered from ComfyUI's cache twice: no edit time"
        return data, secs, "first answer came from ComfyUI's cache; timed on a fresh upload"

    def metric(self, name, src_name, edited_name, points, meta):
        if name == "md":
            entry = self.client.run(md_prompt(self.args.dift_checkpoint, src_name, edited_name, points, meta.prompt,
                                              self.args.ensemble, self.args.seed), timeout=self.args.timeout)
            md = metric_value(entry, "md")
            return {"md": md["md"], "matches": md["matches"], "md_seconds": self.client.exec_seconds(entry)}
        entry = self.client.run(if_prompt(src_name, edited_name), timeout=self.args.timeout)
        fid = metric_value(entry, "if")
        return {"if": fid["if"], "lpips": fid["lpips"], "if_seconds": self.client.exec_seconds(entry)}

    def server_gone(self, e) -> bool:
        """Whether ``e`` (an OSError from the client) means the server stopped answering."""
        if self.proc is not None and self.proc.proc.poll() is not None:
            return True
        return not self.client.ready()

    def sample(self, ref, k, n):
        rdir = db.result_dir(self.out, ref)
        png, edit_json, metrics_json = (os.path.join(rdir, f) for f in (db.RESULT_FILE, "edit.json", "metrics.json"))
        have_edit = os.path.exists(png) and self.check_existing(edit_json, self.edit_id, "edit.json")
        old = read_json(metrics_json) if have_edit and self.check_existing(metrics_json, self.metric_id,
                                                                             "metrics.json") else None
        metrics = {k_: v for k_, v in (old or {}).items() if k_ != "missing"}
        todo = [m for m in self.args.metrics if m not in metrics]
        tag = f"[{k}/{n}] {ref.key}"
        if have_edit and not todo:
            log(f"{tag}: skipped, result exists ({os.path.relpath(png, self.out)})")
            return self.record(ref, read_json(edit_json), metrics)
        stage = "read"
        try:
            img, meta = load_sample(ref)
        except (db.DragBenchError, db.UnsafePickleError) as e:
            return self.fail(ref, "data", f"read: {short(e)}", tag)
        t0 = time.time()
        try:
            stage = "upload"
            src_name, mask_name = upload_sample(self.client, ref, img, meta)
            points = meta.points_json(*img.size)
            if have_edit:
                edit = read_json(edit_json)
                log(f"{tag}: edit exists, computing {', '.join(todo)}")
            else:
                stage = "edit"
                data, secs, note = self.edit(ref, img, meta, src_name, mask_name, tag)
                write_atomic(png, data)
                edit = {**self.edit_id, "seconds": secs, "n_points": len(meta.handles), "sample": ref.key}
                if note:
                    edit["timing"] = note
                write_json(edit_json, edit)
            missing = {}
            if todo:
                stage = "metrics"
                with open(png, "rb") as f:
                    edited_name = self.client.upload_image(f.read(), db.RESULT_FILE,
                                                           f"dragbench/{ref.category}/{ref.name}")
                for m in todo:
                    try:
                        metrics.update(self.metric(m, src_name, edited_name, points, meta))
                    except (comfy_client.PromptError, RuntimeError, TimeoutError, KeyError, ValueError) as e:
                        missing[m] = short(e, 240)
                        log(f"{tag}: no {m.upper()}: {missing[m]}")
                write_json(metrics_json, {**self.metric_id, **metrics, **({"missing": missing} if missing else {})})
        except (OutputError, ServerGone):
            raise
        except (db.DragBenchError, db.UnsafePickleError) as e:  # raised only by the read above
            return self.fail(ref, "data", f"{stage}: {short(e)}", tag)
        except comfy_client.PromptError as e:
            return self.fail(ref, stage, f"{stage}: {short(e)}", tag)
        except OSError as e:  # urllib's errors are OSErrors: the server, or a local file
            if self.server_gone(e):
                raise ServerGone(f"the server stopped answering during {ref.key} ({stage}: {short(e, 160)})") from None
            return self.fail(ref, stage, f"{stage}: {short(e)}", tag)
        except Exception as e:  # noqa: BLE001  anything else: this sample failed, the run goes on
            return self.fail(ref, stage, f"{stage}: {type(e).__name__}: {short(e)}", tag)
        self.times.append(time.time() - t0)
        rec = self.record(ref, edit, {**metrics, "missing": missing})
        shown = [f"edit {edit['seconds']:.2f} s" if edit.get("seconds") is not None else "edit (no time)"]
        shown += [f"MD {metrics['md']:.2f} px"] if "md" in metrics else []
        shown += [f"IF {metrics['if']:.4f}"] if "if" in metrics else []
        log(f"{tag}: {', '.join(shown)}")
        return rec

    def record(self, ref, edit, metrics):
        missing = {m: (metrics.get("missing") or {}).get(m, "not computed") for m in self.args.metrics
                   if m not in metrics}
        matches = metrics.get("matches")
        rec = {"category": ref.category, "sample": ref.key,
               "distances": [m["distance"] for m in matches] if "md" in metrics else None,
               "if": metrics.get("if"), "seconds": edit.get("seconds"), "n_points": edit.get("n_points", 0),
               "missing": missing, "matches": matches or [], "ref": ref}
        self.records.append(rec)
        return rec

    def progress(self, k, n, t_start, remaining):
        if not self.times:
            return
        mean = sum(self.times) / len(self.times)
        log(f"      {k}/{n} done, {fmt_time(time.time() - t_start)} elapsed, ETA {fmt_time(mean * remaining)} "
            f"({mean:.1f} s per new sample)")

    def summary(self, n_dataset, finished: bool) -> dict:
        run = {"method": self.method, "workflow": os.path.relpath(self.workflow_path, REPO)
               if self.workflow_path.startswith(REPO) else self.workflow_path,
               "checkpoint": self.args.checkpoint, "dift_checkpoint": self.args.dift_checkpoint,
               "settings": self.settings, "metrics": list(self.args.metrics),
               "dift": {"t": 261, "up_ft_index": 1, "ensemble": self.args.ensemble, "seed": self.args.seed},
               "dragbench": os.path.abspath(self.args.dragbench), "samples_in_dataset": n_dataset,
               "limit": self.args.limit, "server": self.client.url if self.client else None,
               ("finished" if finished else "stopped"): datetime.datetime.now().isoformat(timespec="seconds")}
        clean = [{k: v for k, v in r.items() if k not in ("matches", "ref")} for r in self.records]
        return db.summarize(clean, self.failed, run, self.not_run)

    def write_summary(self, summary, sheets=None):
        write_json(os.path.join(self.out, "summary.json"), summary)
        write_atomic(os.path.join(self.out, "summary.md"), db.summary_markdown(summary, sheets).encode())

    def finish(self, n_dataset, finished=True):
        summary = self.summary(n_dataset, finished)
        try:
            sheets = self.contact_sheets()
        except OutputError:
            raise
        except Exception as e:  # noqa: BLE001  a picture must not cost the numbers
            log(f"note: no contact sheets ({type(e).__name__}: {short(e, 160)})")
            sheets = {}
        self.write_summary(summary, sheets)
        log("")
        log(db.summary_table(summary))
        log(f"\nwrote {os.path.join(self.out, 'summary.json')}, summary.md and {len(sheets)} contact sheet(s)")
        return summary

    def contact_sheets(self) -> dict:
        from PIL import Image

        contact_sheet = comfy_client.pure_core("dragbench_sheet").contact_sheet

        rows_by_cat = {}
        for rec in self.records:
            ref = rec["ref"]
            try:
                img, meta = load_sample(ref)
                result = db.read_image(os.path.join(db.result_dir(self.out, ref), db.RESULT_FILE))
            except (db.DragBenchError, db.UnsafePickleError):
                continue
            caption = []
            if rec["distances"]:
                caption.append(f"MD {sum(rec['distances']) / len(rec['distances']):.1f} px")
            if rec["if"] is not None:
                caption.append(f"IF {rec['if']:.3f}")
            if rec["seconds"]:
                caption.append(f"{rec['seconds']:.1f} s")
            rows_by_cat.setdefault(ref.category, []).append({
                "title": ref.name, "source": img, "result": result.resize(img.size, Image.BILINEAR),
                "handles": meta.handles, "targets": meta.targets, "mask": meta.mask, "matches": rec["matches"],
                "caption": "  ".join(caption)})
        for f in self.failed:
            cat, name = f["sample"].split("/", 1)
            path = os.path.join(os.path.abspath(self.args.dragbench), cat, name, db.IMAGE_FILE)
            try:
                src = db.read_image(path)
            except db.DragBenchError:
                src = Image.new("RGB", (256, 256), (40, 40, 40))
            rows_by_cat.setdefault(cat, []).append({"title": name, "source": src, "result": None, "handles": [],
                                                    "targets": [], "error": f["error"]})
        sheets = {}
        for cat, rows in sorted(rows_by_cat.items(), key=lambda kv: db._category_order(kv[0])):
            rel = os.path.join("contact_sheets", f"{cat}.png")
            sheet = contact_sheet(rows, cell=self.args.sheet_cell, title=f"{cat}: {self.method}, {self.args.checkpoint}")
            write_atomic(os.path.join(self.out, rel), png_bytes(sheet))
            sheets[cat] = rel
        return sheets


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dragbench", required=True, help="the DragBench folder (<category>/<sample>/...)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--method", choices=sorted(METHODS), default=None, help="the pack's workflow to run")
    how.add_argument("--workflow", help="an API-format workflow with marked inputs (see marked_workflow.py)")
    ap.add_argument("--checkpoint", required=True, help="the edit checkpoint (name in the server's checkpoints, "
                                                        "or a file when the server is started here)")
    ap.add_argument("--out", required=True, help="results folder (OUT/<category>/<sample>/dragged_image.png)")
    ap.add_argument("--dift-checkpoint", help="the DIFT model for MD (official: Stable Diffusion 2.1, e.g. "
                                              "v2-1_768-ema-pruned.safetensors); default: --checkpoint")
    srv = ap.add_mutually_exclusive_group()
    srv.add_argument("--comfyui", help="ComfyUI checkout to start headless (default COMFYUI_ROOT)")
    srv.add_argument("--url", help="a running ComfyUI with this pack, e.g. http://127.0.0.1:8188")
    ap.add_argument("--limit", type=int, help="only the first N samples (official order)")
    ap.add_argument("--samples", nargs="+", help="only these samples / categories (category, category/sample)")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="a workflow setting, e.g. --set steps=20 (fastdrag: steps, strength, cfg; dragdiffusion: "
                         "steps, strength, drag_steps, lora_steps, cfg)")
    ap.add_argument("--metrics", default="md,if",
                    help="the metrics to compute, comma-separated: md (Mean Distance, DIFT), if (Image Fidelity, "
                         "LPIPS); 'none' = edit only (default md,if)")
    ap.add_argument("--ensemble", type=int, default=8, help="DIFT ensemble size (official 8)")
    ap.add_argument("--seed", type=int, default=42, help="DIFT noise seed per sample (official 42)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one prompt may take")
    ap.add_argument("--sheet-cell", type=int, default=256, help="contact sheet image width in px")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                    help="for a ComfyUI started here: auto = --cpu when its torch has no CUDA/ROCm build")
    ap.add_argument("--python", help="the python that runs ComfyUI (default COMFYUI_PYTHON or its venv)")
    ap.add_argument("--comfy-arg", action="append", help="one more main.py argument (repeatable)")
    args = ap.parse_args(argv)
    if not args.method and not args.workflow:
        ap.error("give --method or --workflow")
    if args.method and args.workflow:
        ap.error("give --method or --workflow, not both")
    args.dift_checkpoint = args.dift_checkpoint or args.checkpoint
    names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    names = [] if names == ["none"] else names
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        ap.error(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)} (or none)")
    args.metrics = tuple(m for m in METRICS if m in names)
    return args


def select(samples, args):
    if args.samples:
        keep = set(args.samples)
        samples = [s for s in samples if s.key in keep or s.category in keep or s.name in keep]
    return samples[: args.limit] if args.limit else samples


def main(argv=None):
    args = parse_args(argv)
    try:
        samples = db.list_samples(args.dragbench)
    except db.DragBenchError as e:
        sys.exit(f"dragbench: {e}")
    chosen = select(samples, args)
    if not chosen:
        sys.exit("dragbench: no sample selected")
    try:
        run = Run(args, None, None)  # a workflow or --set mistake stops here, before a server is started
        check_out_dir(run.out, BYTES_PER_SAMPLE * len(chosen) + (16 << 20))  # ... and an unusable --out
        run.not_run = [{"sample": r.key, "reason": "not started"} for r in chosen]
        run.write_summary(run.summary(len(samples), finished=False))  # never an older summary left in place
    except mw.WorkflowError as e:
        sys.exit(f"dragbench: {e}")
    except OutputError as e:
        sys.exit(f"dragbench: {e}; nothing was edited")
    status, proc, done = 1, None, 0
    try:
        run.client, run.proc = client, proc = connect(args)
        args.checkpoint = resolve_checkpoint(client, proc, args.checkpoint, "--checkpoint")
        args.dift_checkpoint = resolve_checkpoint(client, proc, args.dift_checkpoint, "--dift-checkpoint")
        run.edit_id["checkpoint"], run.metric_id["dift_checkpoint"] = args.checkpoint, args.dift_checkpoint
        check_nodes(client, mw.class_types(run.workflow), run.method)
        check_nodes(client, {c for m in args.metrics for c in METRICS[m]}, "the metrics")
        log(f"DragBench: {len(chosen)} of {len(samples)} samples, {run.method} on {args.checkpoint}, "
            f"settings {json.dumps(run.settings)}; metrics {', '.join(args.metrics) or 'none'}"
            + (f", DIFT on {args.dift_checkpoint}" if "md" in args.metrics else "") + f" -> {run.out}")
        if "md" in args.metrics and args.dift_checkpoint == args.checkpoint:
            log("note: MD uses the edit checkpoint as the DIFT model; the official protocol uses Stable Diffusion "
                "2.1 (--dift-checkpoint)")
        t_start = time.time()
        for k, ref in enumerate(chosen, 1):
            run.not_run = [{"sample": r.key, "reason": "not reached"} for r in chosen[k:]]
            run.sample(ref, k, len(chosen))
            done = k
            run.progress(k, len(chosen), t_start, len(chosen) - k)
        summary = run.finish(len(samples))
        status = 0 if summary["complete"] else 1
    except KeyboardInterrupt:
        if run.client is not None:
            run.client.cancel_queued()  # only this run's prompts: a shared server's other work goes on
        stop(run, chosen, done, len(samples), "interrupted (Ctrl-C)")
        log("\ninterrupted; run the same command again to resume (samples with a result are skipped)")
        status = 130
    except ServerGone as e:
        stop(run, chosen, done, len(samples), str(e))
        log(f"\ndragbench: {e}; the samples left were not run")
    except OutputError as e:
        stop(run, chosen, done, len(samples), f"the results could not be written ({e})", write=False)
        log(f"\ndragbench: {e}")
    except SystemExit as e:  # a setup check above (server, checkpoint, nodes, an old result)
        stop(run, chosen, done, len(samples), f"stopped: {e.code}")
        raise
    except Exception as e:  # a bug: the summary still says what is missing, then the traceback
        stop(run, chosen, done, len(samples), f"stopped by an internal error ({type(e).__name__}: {short(e, 160)})")
        raise
    finally:
        if proc is not None:
            proc.cleanup()
    return status


def stop(run, chosen, done, n_dataset, reason, write=True):
    """An early end: every sample not finished is "not run" with ``reason``; the summary says so."""
    finished = {r["sample"] for r in run.records} | {f["sample"] for f in run.failed}
    run.not_run = [{"sample": r.key, "reason": reason} for r in chosen if r.key not in finished]
    summary = run.summary(n_dataset, finished=False)
    if write:
        try:
            run.write_summary(summary)
        except OutputError as e:
            log(f"dragbench: {e}")
            return
    log(db.summary_table(summary))


if __name__ == "__main__":
    sys.exit(main())
