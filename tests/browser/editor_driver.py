#!/usr/bin/env python3
"""Drive the FastDrag front end (points editor, templates, node summaries) in the real ComfyUI
front end, in headless Chromium, over the DevTools protocol. Run with ComfyUI's venv python (needs
aiohttp); test_editor_browser.py runs this script once against the session's test server, then
asserts on the JSON this script prints as its last line (one section per scenario, each with its
own errors, so one failing scenario does not hide the others).

Scenarios (``--scenarios``, in this order, one browser for all): ``templates`` (the template
browser lists the pack's workflows with thumbnails and descriptions), ``examples`` (each workflow
in workflows/ loads, the editor shows its picture and drags; the first is queued on the test
checkpoint and FastDragEdit shows its summary), ``upstream`` (Load Image -> Image Scale -> a new
FastDragPoints: run, picture, press-and-drag, stale picture after rewiring), ``dragbench``
(DragBench Sample's points linked into FastDragPoints: the editor draws what the node used, read-only;
Copy to widget), ``editor`` (the full editor scenario), ``vue`` (the same in the "Nodes 2.0" renderer,
Ctrl+Z included, plus resizing).

Every interaction is a real input event (CDP Input.dispatchMouseEvent / dispatchKeyEvent) at the
viewport position of an image pixel, so the canvas's own event handlers and coordinate mapping are
what is tested; JS evaluation is only used to read state (widget values, node geometry, history).
"""
import argparse
import asyncio
import base64
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import traceback

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--force-device-scale-factor=1"]

# image pixels on the 320x224 test image (test_editor_browser.py writes it)
HANDLE, TARGET = (150, 110), (200, 90)   # first drag
MOVED_TARGET = (236, 76)                 # the target after dragging it
SECOND = ((60, 180), (90, 168))          # a pair that gets removed again
EXTERNAL = ((250, 150), (226, 176))      # a pair typed into the points JSON


class CDP:
    def __init__(self, ws):
        self.ws, self.n, self.pending, self.console = ws, 0, {}, []

    async def reader(self):
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
                continue
            method, p = data.get("method"), data.get("params", {})
            if method == "Page.javascriptDialogOpening":  # "leave the page?" on reload: yes
                asyncio.get_running_loop().create_task(self.call("Page.handleJavaScriptDialog", accept=True))
            elif method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                self.console.append({"kind": "exception", "url": d.get("url", ""),
                                     "text": (d.get("exception", {}).get("description") or d.get("text", ""))[:800]})
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                frames = (p.get("stackTrace") or {}).get("callFrames") or [{}]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                self.console.append({"kind": p["type"], "url": frames[0].get("url", ""), "text": text[:800]})
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                e = p["entry"]
                self.console.append({"kind": "log-" + e["level"], "url": e.get("url", ""), "text": e["text"][:800]})

    async def call(self, method, **params):
        self.n += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.n] = fut
        await self.ws.send_str(json.dumps({"id": self.n, "method": method, "params": params}))
        res = await asyncio.wait_for(fut, 60)
        if "error" in res:
            raise RuntimeError(f"{method}: {res['error']}")
        return res["result"]

    async def js(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or str(d))
        return r["result"].get("value")

    async def wait(self, expr, timeout=15.0, every=0.05):
        t0 = time.time()
        while True:
            try:
                v = await self.js(expr)
            except RuntimeError:
                v = None
            if v:
                return v
            if time.time() - t0 > timeout:
                raise TimeoutError(f"timed out after {timeout}s waiting for: {expr}")
            await asyncio.sleep(every)

    async def mouse(self, kind, x, y, button="left", buttons=0, click_count=1):
        await self.call("Input.dispatchMouseEvent", type=kind, x=float(x), y=float(y), button=button,
                        buttons=buttons, clickCount=click_count)

    async def click(self, x, y, button="left"):
        mask = {"left": 1, "right": 2}[button]
        await self.mouse("mouseMoved", x, y, button="none")
        await self.mouse("mousePressed", x, y, button=button, buttons=mask)
        await self.mouse("mouseReleased", x, y, button=button, buttons=0)

    async def drag(self, a, b, steps=8):
        await self.mouse("mouseMoved", *a, button="none")
        await self.mouse("mousePressed", *a, button="left", buttons=1)
        for i in range(1, steps + 1):
            t = i / steps
            await self.mouse("mouseMoved", a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t,
                             button="left", buttons=1)
            await asyncio.sleep(0.02)
        await self.mouse("mouseReleased", *b, button="left", buttons=0)

    async def key(self, key, code, vk):
        for kind in ("rawKeyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=vk)


ED = "window.__fd.fastdragEditor"
POINTS = "JSON.parse(window.__fd.widgets.find(w => w.name === 'points').value || 'null')"


async def pixel(cdp, x, y):
    p = await cdp.js(f"{ED}.imageToClient({x}, {y})")
    if not p:
        raise RuntimeError("editor has no layout (image not shown?)")
    return p["x"], p["y"]


async def center(cdp, element):
    """Viewport centre of an editor element (e.g. "undoButton"), once it is laid out."""
    expr = (f"(() => {{ const r = {ED}.{element}.getBoundingClientRect();"
            " return r.width > 0 && r.height > 0 && [r.x + r.width / 2, r.y + r.height / 2]; })()")
    return await cdp.wait(expr, timeout=10)


async def find_node(cdp):
    """Bind window.__fd to the FastDragPoints node; True once its editor shows an image."""
    return await cdp.js("(() => { const n = window.comfyAPI.app.app.graph.nodes.find(n => n.type === 'FastDragPoints');"
                        " window.__fd = n; return !!(n && n.fastdragEditor && n.fastdragEditor.image); })()")


async def shoot(cdp, args, name, node=False):
    """Save a screenshot of the page, or of the FastDragPoints node only."""
    await cdp.js("app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.15)
    params = {"format": "png"}
    if node:
        box = await cdp.js("(() => { const n = window.__fd, c = app.canvas, ds = c.ds;"
                           " const r = c.canvas.getBoundingClientRect(); const t = LiteGraph.NODE_TITLE_HEIGHT;"
                           " const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - t]);"
                           " return [r.left + x, r.top + y, n.size[0] * ds.scale, (n.size[1] + t) * ds.scale]; })()")
        pad = 10
        params["clip"] = {"x": max(0, box[0] - pad), "y": max(0, box[1] - pad), "width": box[2] + 2 * pad,
                          "height": box[3] + 2 * pad, "scale": 1}
    shot = await cdp.call("Page.captureScreenshot", **params)
    with open(os.path.join(args.out_dir, name), "wb") as f:
        f.write(base64.b64decode(shot["data"]))


async def open_app(cdp, url):
    """Load the front end and wait until the app and its graph canvas exist."""
    await cdp.call("Page.navigate", url=url)
    await cdp.wait("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app"
                   " && window.comfyAPI.app.app.graph && window.comfyAPI.app.app.canvas)", timeout=90, every=0.25)
    await cdp.js("window.app = window.comfyAPI.app.app; true")
    await cdp.wait("!!LiteGraph.registered_node_types['FastDragPoints']", timeout=30)
    await asyncio.sleep(1.0)  # let the startup workflow restore finish before replacing the graph


async def load_graph(cdp, wf, editor=True):
    """Load a UI-format workflow; retry: the startup restore can still replace the graph. True once
    its FastDragPoints editor shows an image (``editor``), or once its nodes are on the canvas."""
    ready = find_node if editor else (lambda c: c.js(f"app.graph.nodes.length === {len(wf['nodes'])}"))
    for _ in range(3):
        await cdp.js(f"Promise.resolve(app.loadGraphData({json.dumps(wf)})).then(() => true)")
        t0 = time.time()
        while time.time() - t0 < 10:
            if await ready(cdp):
                return True
            await asyncio.sleep(0.2)
    return False


async def editor_scenario(cdp, args, R, workflow, prefix=""):
    http_base = args.url
    with open(workflow) as f:
        wf = json.load(f)
    ok = await load_graph(cdp, wf)
    R["workflow_loaded"] = ok
    if not ok:
        return
    await asyncio.sleep(0.5)
    R["image_size"] = await cdp.js(f"{ED}.imageSize()")
    R["image_source"] = await cdp.js(f"{ED}.imageRef")
    R["points_widget_hidden"] = await cdp.js("!!window.__fd.widgets.find(w => w.name === 'points').hidden")
    R["mask_overlay"] = await cdp.js(f"!!({ED}.mask && {ED}.mask.overlay)")

    # ---- click a handle, then its target
    await cdp.click(*await pixel(cdp, *HANDLE))
    await asyncio.sleep(0.1)
    R["pending_after_first_click"] = await cdp.js(f"{ED}.pending")
    await cdp.click(*await pixel(cdp, *TARGET))
    await asyncio.sleep(0.1)
    R["points_after_clicks"] = await cdp.js(POINTS)

    # ---- a second pair, removed by right-click, restored by the Undo button, removed by Delete
    await cdp.click(*await pixel(cdp, *SECOND[0]))
    await cdp.click(*await pixel(cdp, *SECOND[1]))
    await asyncio.sleep(0.1)
    R["drags_after_second_pair"] = len((await cdp.js(POINTS))["drags"])
    await cdp.click(*await pixel(cdp, *SECOND[0]), button="right")
    await asyncio.sleep(0.1)
    R["drags_after_right_click"] = len((await cdp.js(POINTS))["drags"])
    ub = await center(cdp, "undoButton")
    await cdp.click(*ub)
    await asyncio.sleep(0.1)
    R["drags_after_undo"] = len((await cdp.js(POINTS))["drags"])
    await cdp.js(f"{ED}.root.focus(); true")
    await cdp.key("Delete", "Delete", 46)
    await asyncio.sleep(0.1)
    R["drags_after_delete"] = len((await cdp.js(POINTS))["drags"])
    R["node_still_there"] = await cdp.js("app.graph.nodes.includes(window.__fd)")

    # ---- resize the node and zoom the graph out, then drag the target to a new spot
    await cdp.js("window.__fd.setSize([window.__fd.size[0] + 160, window.__fd.size[1] + 120]);"
                 " app.canvas.ds.changeScale(0.8, [0, 0]); app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.6)
    R["canvas_css_size"] = await cdp.js(f"[{ED}.canvas.clientWidth, {ED}.canvas.clientHeight]")
    R["zoomed_canvas_rect"] = await cdp.js(f"(() => {{ const r = {ED}.canvas.getBoundingClientRect(); return [r.width, r.height]; }})()")
    await cdp.drag(await pixel(cdp, *TARGET), await pixel(cdp, *MOVED_TARGET))
    await cdp.js("app.canvas.ds.changeScale(1, [0, 0]); app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.3)
    await asyncio.sleep(0.1)
    R["points_after_drag"] = await cdp.js(POINTS)

    # ---- the API prompt and the saved workflow carry the points and nothing of the canvas
    prompt = await cdp.js("(async () => { const p = await app.graphToPrompt();"
                          " return {output: p.output, workflow: JSON.stringify(p.workflow)}; })()")
    node_id = str(await cdp.js("window.__fd.id"))
    R["prompt_inputs"] = prompt["output"][node_id]["inputs"]
    saved = prompt["workflow"]
    R["saved_workflow_bytes"] = len(saved)
    R["saved_has_image_data"] = "data:image" in saved or "base64" in saved
    R["saved_widgets_values"] = [n for n in json.loads(saved)["nodes"] if n["type"] == "FastDragPoints"][0]["widgets_values"]

    # ---- queue from the UI; the server must run it with these drags
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{http_base}/history") as r:
            before = set((await r.json()).keys())
        await cdp.js("Promise.resolve(app.queuePrompt(0, 1)).then(() => true)")
        t0 = time.time()
        entry = None
        while time.time() - t0 < 120:
            async with http.get(f"{http_base}/history") as r:
                hist = await r.json()
            new = [k for k in hist if k not in before]
            if new and hist[new[0]].get("status", {}).get("completed") is not None:
                entry = hist[new[0]]
                if entry["status"].get("completed") or entry["status"].get("status_str") == "error":
                    break
            await asyncio.sleep(0.3)
    R["run_status"] = entry and entry["status"].get("status_str")
    R["run_messages"] = entry and [m[0] for m in entry["status"].get("messages", [])]
    if entry:
        R["run_points"] = entry["prompt"][2][node_id]["inputs"]["points"]
        R["run_outputs"] = entry["outputs"]
    # after the run the node sends its image back (ui); the editor shows it
    try:
        await cdp.wait(f"{ED}.useRun && {ED}.image && {ED}.imageRef.type === 'temp'", timeout=10)
        R["editor_shows_run_image"] = await cdp.js(f"{ED}.imageRef")
    except TimeoutError:
        R["editor_shows_run_image"] = None
    await asyncio.sleep(0.5)
    await shoot(cdp, args, prefix + "editor_after_run.png")
    R["node_size_after_run"] = await cdp.js("window.__fd.size")

    # ---- reload the saved workflow: the points come back and are drawn
    await cdp.js("Promise.resolve(app.loadGraphData()).then(() => true)")  # default graph in between
    await asyncio.sleep(0.5)
    R["gone_after_other_graph"] = await cdp.js("!app.graph.nodes.some(n => n.type === 'FastDragPoints')")
    await cdp.js(f"Promise.resolve(app.loadGraphData({saved})).then(() => true)")
    t0 = time.time()
    while time.time() - t0 < 10 and not await find_node(cdp):
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)
    R["points_after_reload"] = await cdp.js(POINTS)
    R["drags_drawn_after_reload"] = await cdp.js(f"{ED}.state().drags.length")

    await asyncio.sleep(0.3)
    await shoot(cdp, args, prefix + "editor_node.png", node=True)

    # ---- warp preview: toggle it on with a click, an image arrives; a drag updates it
    tg = await center(cdp, "previewToggle")
    t_click = time.time()
    await cdp.click(*tg)
    await cdp.wait(f"{ED}.preview.img && {ED}.preview.count >= 1", timeout=15, every=0.02)
    R["preview_first_s"] = round(time.time() - t_click, 3)
    R["preview"] = await cdp.js(f"(() => {{ const p = {ED}.preview; return {{on: p.on, w: p.img.naturalWidth,"
                                f" h: p.img.naturalHeight, ms: p.ms, serverMs: p.serverMs, holes: p.holes,"
                                f" grid: p.grid, error: p.error}}; }})()")
    count = await cdp.js(f"{ED}.preview.count")
    t_drag = time.time()
    await cdp.drag(await pixel(cdp, *MOVED_TARGET), await pixel(cdp, *TARGET), steps=4)
    await cdp.wait(f"{ED}.preview.count > {count} && !{ED}.preview.inFlight && !{ED}.preview.again", timeout=15, every=0.02)
    R["preview_after_drag_s"] = round(time.time() - t_drag, 3)
    R["preview_requests_during_drag"] = await cdp.js(f"{ED}.preview.count") - count
    R["points_after_second_drag"] = await cdp.js(POINTS)

    # ---- the points text edited outside the canvas (JSON widget): the editor and preview follow
    edited = dict(R["points_after_second_drag"])
    edited["drags"] = edited["drags"] + [{"handle": list(EXTERNAL[0]), "target": list(EXTERNAL[1])}]
    count = await cdp.js(f"{ED}.preview.count")
    await cdp.js(f"window.__fd.widgets.find(w => w.name === 'points').value = {json.dumps(json.dumps(edited))};"
                 " app.canvas.setDirty(true, true); true")
    await cdp.wait(f"{ED}.preview.count > {count} && !{ED}.preview.inFlight && !{ED}.preview.again", timeout=15, every=0.02)
    R["drags_drawn_after_external_edit"] = await cdp.js(f"{ED}.state().drags.length")
    await asyncio.sleep(0.3)
    await warnings_steps(cdp, args, R, edited, prefix)
    await cdp.js("app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.3)

    # ---- screenshots: the page, and the node with the preview on (the one without is taken above)
    await shoot(cdp, args, prefix + "editor_browser.png")
    await shoot(cdp, args, prefix + "editor_node_preview.png", node=True)

    # ---- Clear, then Ctrl+Z brings the drags back; the JSON button shows the points widget
    # (an edit on the canvas first: it ends with a mouseup, on which ComfyUI records the graph state)
    await cdp.drag(await pixel(cdp, *EXTERNAL[1]), await pixel(cdp, EXTERNAL[1][0] + 6, EXTERNAL[1][1] + 4), steps=3)
    await asyncio.sleep(0.2)
    before = await cdp.js(POINTS)
    # a node with the pack's other DOM widget (FastDragInvert's summary), recorded by the change tracker
    await cdp.js("(() => { const n = LiteGraph.createNode('FastDragInvert'); n.pos = [60, 520]; app.graph.add(n);"
                 " app.extensionManager.workflow.activeWorkflow.changeTracker.checkState(); return true; })()")
    await asyncio.sleep(0.3)
    cb = await center(cdp, "clearButton")
    await cdp.click(*cb)
    await asyncio.sleep(0.1)
    R["drags_after_clear"] = len((await cdp.js(POINTS))["drags"])
    # Ctrl+Z in the editor is ComfyUI's graph undo: it reloads the graph with the points before Clear
    await cdp.js(f"{ED}.root.focus(); true")
    for kind in ("rawKeyDown", "keyUp"):
        await cdp.call("Input.dispatchKeyEvent", type=kind, key="z", code="KeyZ", windowsVirtualKeyCode=90, modifiers=2)
    t0 = time.time()
    while time.time() - t0 < 10:
        await asyncio.sleep(0.2)
        if await find_node(cdp) and (await cdp.js(POINTS)) == before:
            break
    R["ctrl_z_restores"] = (await cdp.js(POINTS)) == before
    R["drags_drawn_after_ctrl_z"] = await cdp.js(f"{ED}.state().drags.length")
    R["editor_mounted_after_ctrl_z"] = await cdp.js(f"document.contains({ED}.root)")
    R["editors_in_document_after_ctrl_z"] = await cdp.js("document.querySelectorAll('.fastdrag-editor').length")
    R["summary_after_ctrl_z"] = await cdp.js(
        "(() => { const n = app.graph.nodes.find(n => n.type === 'FastDragInvert'); return n && {mounted:"
        " n.fastdragSummary.el.isConnected, in_document: document.querySelectorAll('.fastdrag-summary').length}; })()")
    # the new node's editor takes input: one more drag, click-click
    await cdp.click(*await pixel(cdp, *SECOND[0]))
    await cdp.click(*await pixel(cdp, *SECOND[1]))
    await asyncio.sleep(0.1)
    R["drags_after_click_after_ctrl_z"] = len((await cdp.js(POINTS))["drags"])
    jb = await center(cdp, "jsonButton")
    await cdp.click(*jb)
    await asyncio.sleep(0.2)
    R["json_shown"] = await cdp.js("!window.__fd.widgets.find(w => w.name === 'points').hidden")

    await cdp.click(*jb)
    await asyncio.sleep(0.3)
    await find_node(cdp)

    # ---- removal cleans up
    await cdp.js(f"window.__fdEd = {ED}; app.graph.remove(window.__fd); true")
    await asyncio.sleep(0.5)
    R["removed"] = await cdp.js("({dead: !!window.__fdEd.dead, canvas_in_document: document.contains(window.__fdEd.canvas),"
                                " editor_on_node: !!window.__fd.fastdragEditor})")


async def set_points(cdp, value):
    await cdp.js(f"window.__fd.widgets.find(w => w.name === 'points').value = {json.dumps(json.dumps(value))};"
                 " app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.3)


async def warnings_steps(cdp, args, R, points, prefix):
    """What the status line warns of before a run: a handle outside the mask; 33 drags (all drawn, the
    last one grey and removable by right-click); the picture does not move when the status wraps onto
    one more line (1 to 4 lines). ``points`` are put back at the end."""
    outside = dict(points, drags=points["drags"] + [{"handle": [6, 6], "target": [40, 30]}])
    await set_points(cdp, outside)
    R["status_handle_outside"] = (await status_facts(cdp))["text"]
    R["handles_outside"] = await cdp.js(f"{ED}.handlesOutside")
    over = dict(points, drags=[{"handle": [100 + k * 3, 90], "target": [110 + k * 3, 95]} for k in range(33)])
    await set_points(cdp, over)
    R["over_limit"] = {"drawn": await cdp.js(f"{ED}.state().drags.length"), "status": (await status_facts(cdp))["text"]}
    await shoot(cdp, args, prefix + "editor_33_drags.png", node=True)
    last = over["drags"][-1]["target"]
    await cdp.click(*await pixel(cdp, *last), button="right")
    await asyncio.sleep(0.2)
    R["over_limit"]["after_right_click"] = {"drags": len((await cdp.js(POINTS))["drags"]),
                                            "status": (await status_facts(cdp))["text"]}
    # the status with 1, 2, 3, 4 and 5 lines of text: where the picture's canvas starts in the editor
    R["canvas_top_by_status_lines"] = await cdp.js(f"""(() => {{ const e = {ED}, out = {{}};
      const k = e.canvas.getBoundingClientRect().height / (e.canvas.clientHeight || 1) || 1;
      const lh = parseFloat(getComputedStyle(e.status).lineHeight), range = document.createRange();
      for (let words = 1; words < 600; words += 2) {{ e.setStatus('word '.repeat(words));
        range.selectNodeContents(e.status);
        const lines = Math.round(range.getBoundingClientRect().height / k / lh);
        if (lines <= 5 && !(lines in out)) out[lines] = Math.round((e.canvas.getBoundingClientRect().top
          - e.root.getBoundingClientRect().top) / k); }}
      e.draw(); return out; }})()""")
    await set_points(cdp, points)


STATUS = f"{ED}.status"


async def status_facts(cdp):
    """The status line: its text, whether it shows all of it (no clipping), the picture's tooltip."""
    return await cdp.js(f"(() => {{ const s = {STATUS}; return {{text: s.textContent,"
                        f" clipped: s.scrollWidth > s.clientWidth + 1 || s.scrollHeight > s.clientHeight + 1,"
                        f" tooltip: {ED}.canvas.title}}; }})()")


async def dot_rings(cdp, x, y, r=5):
    """Canvas pixels on a horizontal line through the dot at image pixel (x, y): the darkest and
    lightest luminance found in the ring just outside the filled disc (radius r .. r + 3 css px)."""
    return await cdp.js(f"""(() => {{
      const e = {ED}, L = e.layout(), dpr = window.devicePixelRatio || 1;
      const [cx, cy] = e.toCanvas([{x}, {y}], L);
      const ctx = e.canvas.getContext('2d');
      const lum = [];
      for (let d = {r}; d <= {r} + 3.5; d += 0.5) for (const sx of [-1, 1]) {{
        const p = ctx.getImageData(Math.round((cx + sx * d) * dpr), Math.round(cy * dpr), 1, 1).data;
        lum.push(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]);
      }}
      return {{dark: Math.min(...lum), light: Math.max(...lum)}};
    }})()""")


async def wait_history(http, base, before, timeout=120):
    """The history entry of the first prompt queued after ``before`` (ids), once it has finished."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        async with http.get(f"{base}/history") as r:
            hist = await r.json()
        new = [k for k in hist if k not in before]
        if new:
            st = hist[new[0]].get("status", {})
            if st.get("completed") or st.get("status_str") == "error":
                return hist[new[0]]
        await asyncio.sleep(0.25)
    return None


async def history_ids(http, base):
    async with http.get(f"{base}/history") as r:
        return set((await r.json()).keys())


async def queue_and_wait(cdp, args):
    """Queue the graph as the Queue button does (graphToPrompt, POST /prompt with this page's client
    id, so the server's messages come back to it); wait for its history entry. A prompt the server
    refuses comes back as {"status": {"status_str": "refused"}, "node_errors": ...}."""
    async with aiohttp.ClientSession() as http:
        before = await history_ids(http, args.url)
        res = await cdp.js("""(async () => { const { api } = window.comfyAPI.api; const p = await app.graphToPrompt();
          const r = await api.fetchApi('/prompt', {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({prompt: p.output, client_id: api.clientId, extra_data: {extra_pnginfo: {workflow: p.workflow}}})});
          return {status: r.status, body: await r.json()}; })()""")
        if res["status"] != 200 or res["body"].get("node_errors"):
            return {"status": {"status_str": "refused", "messages": []}, "refused": res["body"]}
        entry = await wait_history(http, args.url, before)
    if entry and entry["status"].get("status_str") == "error":  # the front end shows an error dialog: close it
        await asyncio.sleep(0.5)
        await close_dialogs(cdp)
    return entry


async def close_dialogs(cdp):
    """Close the front end's dialogs (template browser, error report): Escape, then a close button."""
    for k in range(6):
        if not await cdp.js("document.querySelectorAll('[role=dialog]').length"):
            return True
        if k % 2 == 0:
            await cdp.key("Escape", "Escape", 27)
        else:  # the dialog's close button: its top-right-most button
            xy = await cdp.js("""(() => { let best = null, score = -1e9;
              for (const b of document.querySelectorAll('[role=dialog] button')) { const r = b.getBoundingClientRect();
                if (r.width > 0 && r.right - r.top > score) { score = r.right - r.top; best = [r.x + r.width / 2, r.y + r.height / 2]; } }
              return best; })()""")
            if xy:
                await cdp.click(*xy)
        await asyncio.sleep(0.4)
    return not await cdp.js("document.querySelectorAll('[role=dialog]').length")


def error_message(entry):
    if entry and entry.get("refused"):
        return json.dumps(entry["refused"])[:1500]
    for kind, data in (entry or {}).get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data.get("exception_message", "")
    return None


async def templates_scenario(cdp, args, R):
    """Open the template browser on the pack's category: every workflow is listed, with a loaded
    thumbnail and a description."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{args.url}/workflow_templates") as r:
            listed = (await r.json()).get(args.pack_name, [])
    R["listed"] = sorted(listed)
    await cdp.js("Promise.resolve(app.extensionManager.command.execute('Comfy.BrowseTemplates')).then(() => true)")
    # the pack's own category in the dialog's navigation (label = the pack's folder name)
    nav_js = f"""(() => {{
      const el = [...document.querySelectorAll('[role=dialog] *')].find(e => e.children.length === 0
        && e.textContent.trim() === {json.dumps(args.pack_name)});
      if (!el) return null; const r = el.getBoundingClientRect();
      return r.width > 0 && [r.x + r.width / 2, r.y + r.height / 2]; }})()"""
    cards_js = """(() => [...document.querySelectorAll('[role=dialog] img')]
      .filter(i => i.getBoundingClientRect().width > 0)
      .map(i => { let c = i; for (let k = 0; k < 8 && c && !/card/i.test(c.className || ''); k++) c = c.parentElement;
                  return {src: i.currentSrc || i.src, loaded: i.complete && i.naturalWidth > 0,
                          text: (c || i.parentElement).innerText}; }))()"""
    pack_cards_shown = f"""(() => {{ const names = {json.dumps(listed)}; const cards = {cards_js};
      return cards.length === names.length && cards.every(c => c.loaded
             && names.some(n => (c.text || '').includes(n))); }})()"""
    # the dialog opens with ComfyUI's own templates and an opening animation: click the category once
    # its place has settled, and again if the pack's cards (thumbnails load lazily) do not come
    # the dialog's grid shows 3 cards a row at 1400 px and renders the rows in view only: with more than 6
    # templates the view is made taller for this scenario, so that every card is rendered
    tall = 1000 + 420 * max(0, -(-len(listed) // 3) - 2)
    if tall > 1000:
        await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=tall, deviceScaleFactor=1, mobile=False)
    for _ in range(3):
        nav = await cdp.wait(nav_js, timeout=20)
        await asyncio.sleep(0.3)
        nav = await cdp.wait(nav_js, timeout=5)
        await cdp.click(*nav)
        try:
            await cdp.wait(pack_cards_shown, timeout=8)
            break
        except TimeoutError:
            pass  # the test reports what is there after the last try
    R["cards"] = await cdp.js(cards_js)
    await shoot(cdp, args, "templates_dialog.png")
    if tall > 1000:
        await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    R["closed"] = await close_dialogs(cdp)


async def examples_scenario(cdp, args, R):
    """Each shipped workflow: the editor shows its picture and drags, one more drag can be placed;
    the first one is then queued on the test checkpoint: FastDragEdit shows its own summary."""
    R["workflows"] = {}
    for path in sorted(glob.glob(os.path.join(args.workflows, "*.json"))):
        with open(path) as f:
            wf = json.load(f)
        editor = any(n.get("type") == "FastDragPoints" for n in wf.get("nodes", []))
        name = os.path.splitext(os.path.basename(path))[0]
        W = R["workflows"][name] = {"editor": editor}
        W["workflow_loaded"] = ok = await load_graph(cdp, wf, editor=editor)
        if not ok:
            continue
        # the whole graph on screen, as a user opening the template sees it (also the thumbnail)
        await cdp.js("app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0]; true")
        W["overlaps"] = await cdp.js("""(() => { const ns = app.graph.nodes, t = LiteGraph.NODE_TITLE_HEIGHT, out = [];
          for (const a of ns) for (const b of ns) if (a.id < b.id) {
            const ax = a.pos[0], ay = a.pos[1] - t, bx = b.pos[0], by = b.pos[1] - t;
            if (ax < bx + b.size[0] && bx < ax + a.size[0] && ay < by + b.size[1] + t && by < ay + a.size[1] + t)
              out.push([a.type, b.type]); }
          return out; })()""")
        W["extent"] = await cdp.js("""(() => { let x1 = 0, y1 = 0; for (const n of app.graph.nodes) {
          x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); } return [x1, y1]; })()""")
        W["notes"] = await cdp.js("app.graph.nodes.filter(n => /Note/.test(n.type)).map(n => n.widgets?.[0]?.value ?? '')")
        W["sizes"] = await cdp.js("Object.fromEntries(app.graph.nodes.map(n => [n.type, [...n.pos, ...n.size]]))")
        await asyncio.sleep(0.5)
        await shoot(cdp, args, f"workflow_{name}.png")
        if args.thumbnails:  # the whole graph, fitted into the view, 512 px wide, without the minimap
            clip = await cdp.js("""(() => { const ns = app.graph.nodes, t = LiteGraph.NODE_TITLE_HEIGHT, ds = app.canvas.ds;
              let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
              for (const n of ns) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - t);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
              // the part of the canvas not under the side bar and the top menu
              const r = app.canvas.canvas.getBoundingClientRect(), left = 70, top = 110, pad = 12;
              const w = r.width - left - 20, h = r.height - top - 80;
              const s = Math.min(1, (w - 2 * pad) / (x1 - x0), (h - 2 * pad) / (y1 - y0));
              ds.scale = s; ds.offset = [(left + pad) / s - x0, (top + pad) / s - y0]; app.canvas.setDirty(true, true);
              return {x: r.left + left, y: r.top + top, width: (x1 - x0) * s + 2 * pad, height: (y1 - y0) * s + 2 * pad}; })()""")
            await asyncio.sleep(0.8)
            clip["scale"] = 512 / clip["width"]
            shot = await cdp.call("Page.captureScreenshot", format="jpeg", quality=82, clip=clip)
            with open(os.path.join(args.thumbnails, name + ".jpg"), "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        if not editor:
            continue
        # bring the points node into view at scale 1, top left
        await cdp.js("(() => { const n = window.__fd, ds = app.canvas.ds; ds.scale = 1;"
                     " ds.offset = [120 - n.pos[0], 140 - n.pos[1]]; app.canvas.setDirty(true, true); return true; })()")
        await asyncio.sleep(0.6)
        W["image_size"] = await cdp.js(f"{ED}.imageSize()")
        W["image_source"] = await cdp.js(f"{ED}.imageRef")
        W["points_before"] = await cdp.js(POINTS)
        W["drags_drawn"] = await cdp.js(f"{ED}.state().drags.length")
        w, h = W["image_size"]
        a, b = (round(w * 0.25), round(h * 0.7)), (round(w * 0.3), round(h * 0.6))
        W["clicked"] = [a, b]
        await cdp.click(*await pixel(cdp, *a))
        await cdp.click(*await pixel(cdp, *b))
        await asyncio.sleep(0.1)
        W["points_after"] = await cdp.js(POINTS)
        await shoot(cdp, args, f"example_{name}.png")
        if name == args.run_workflow and args.ckpt:
            # run it on the test checkpoint: FastDragEdit shows the inversion and sampling lines
            # (on the server's small test picture: the node rescales the shipped points to it)
            await cdp.js(f"""(() => {{ const c = app.graph.nodes.find(n => n.type === 'CheckpointLoaderSimple');
              c.widgets[0].value = {json.dumps(args.ckpt)};
              const li = app.graph.nodes.find(n => n.type === 'LoadImage');
              li.widgets.find(w => w.name === 'image').value = {json.dumps(args.run_image)}; return true; }})()""")
            entry = await queue_and_wait(cdp, args)
            R["edit_run"] = {"workflow": name, "status": entry and entry["status"].get("status_str"),
                             "error": error_message(entry)}
            await asyncio.sleep(0.5)
            R["edit_run"]["summary"] = await cdp.js(
                "(() => { const n = app.graph.nodes.find(n => n.type === 'FastDragEdit');"
                " return n && n.fastdragSummary ? n.fastdragSummary.el.textContent : null; })()")
            R["edit_run"]["edit_id"] = await cdp.js("String(app.graph.nodes.find(n => n.type === 'FastDragEdit').id)")
            R["edit_run"]["text_outputs"] = entry and {k: {"text": v.get("text"), **entry.get("meta", {}).get(k, {})}
                                                       for k, v in entry.get("outputs", {}).items() if "text" in v}
            await shoot(cdp, args, f"example_{name}_after_run.png")
    run = R.get("edit_run") or {}
    args.run_lines = [t for v in (run.get("text_outputs") or {}).values() for t in (v.get("text") or [])]
    R["after_run"] = await layouts_after_run(cdp, args, args.run_lines)


# Node boxes (graph units, title bar included) that overlap, and summaries whose text does not fit
# their box (LiteGraph renderer); in the "Nodes 2.0" renderer the nodes' DOM boxes.
OVERLAPS_JS = """(() => { const ns = app.graph.nodes, t = LiteGraph.NODE_TITLE_HEIGHT, out = [];
  const vue = !!document.querySelector('.lg-node');
  const box = (n) => { if (vue) { const el = document.querySelector(`.lg-node[data-node-id="${n.id}"]`);
      if (!el) return null; const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
    return [n.pos[0], n.pos[1] - t, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]; };
  for (const a of ns) for (const b of ns) if (a.id < b.id) { const p = box(a), q = box(b);
    if (p && q && p[0] < q[2] && q[0] < p[2] && p[1] < q[3] && q[1] < p[3])
      out.push([a.type, b.type, Math.round(Math.min(p[3], q[3]) - Math.max(p[1], q[1]))]); }
  const spilled = [];
  for (const n of ns) { const el = n.fastdragSummary?.el; if (!el || !el.textContent) continue;
    const k = el.getBoundingClientRect().height / (el.offsetHeight || 1) || 1;
    const range = document.createRange(); range.selectNodeContents(el);
    const text = range.getBoundingClientRect(), own = el.getBoundingClientRect();
    let node = own; if (vue) { const ne = el.closest('.lg-node'); node = ne ? ne.getBoundingClientRect() : own; }
    else { const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
      const [x0, y0] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1]]);
      node = {bottom: r.top + y0 + n.size[1] * ds.scale}; }
    const over = Math.round((Math.max(text.bottom - own.bottom, text.bottom - node.bottom)) / k);
    if (over > 1) spilled.push([n.type, over]); }
  return {overlaps: out, spilled}; })()"""


async def layouts_after_run(cdp, args, lines, prefix=""):
    """Every template as a user sees it after a run: the text lines of the real run of the first
    template (``lines``) delivered to each template's summary nodes the way ComfyUI delivers a run's
    outputs (an "executed" message), then node boxes checked for overlap and summaries for text
    that runs out of its node; a screenshot of each (``<prefix>after_run_<name>.png``)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(args.workflows, "*.json"))):
        with open(path) as f:
            wf = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        editor = any(n.get("type") == "FastDragPoints" for n in wf.get("nodes", []))
        W = out[name] = {"loaded": await load_graph(cdp, wf, editor=editor)}
        if not W["loaded"]:
            continue
        W["delivered"] = await cdp.js(f"""(() => {{ const {{ api }} = window.comfyAPI.api; const lines = {json.dumps(lines)};
          const pick = {{FastDragEdit: lines, FastDragInvert: lines.filter(t => t.startsWith('inverted')),
                         FastDragSample: lines.filter(t => t.startsWith('sampled'))}};
          let k = 0; for (const n of app.graph.nodes) {{ const t = pick[n.type]; if (!t || !t.length) continue;
            api.dispatchCustomEvent('executed', {{node: String(n.id), display_node: String(n.id), output: {{text: t}}}}); k++; }}
          return k; }})()""")
        await asyncio.sleep(0.6)  # fit() resizes on the next animation frame
        W.update(await cdp.js(OVERLAPS_JS))
        W["note_visible"] = await cdp.js("""(() => { const n = app.graph.nodes.find(n => n.type === 'Note');
          if (!n) return null; const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect(), t = LiteGraph.NODE_TITLE_HEIGHT;
          const pts = [[n.pos[0] + 8, n.pos[1] - t + 6], [n.pos[0] + n.size[0] - 8, n.pos[1] - t + 6], [n.pos[0] + 8, n.pos[1] + 20]];
          return pts.every(([x, y]) => { const [cx, cy] = ds.convertOffsetToCanvas([x, y]);
            const el = document.elementFromPoint(r.left + cx, r.top + cy);
            return !!el && (el === app.canvas.canvas || !!el.closest('.lg-node, .dom-widget, textarea')); }); })()""")
        await shoot(cdp, args, f"{prefix}after_run_{name}.png")
    return out


async def upstream_scenario(cdp, args, R):
    """Load Image -> Image Scale -> a new FastDragPoints (no drags): the run stops at the node, which
    sends its picture; press-and-drag places a drag; rewiring marks the picture stale. First, nodes
    added as from the menu: the seed's "control after generate" of the pack's nodes and of KSampler."""
    R["seed_controls"] = await cdp.js("""(() => { const out = {};
      for (const t of ['DragDiffusionLoRA', 'DragDiffusionEdit', 'DragMeanDistance', 'KSampler']) {
        const n = LiteGraph.createNode(t); app.graph.add(n);
        out[t] = n.widgets.find(w => w.name === 'control_after_generate')?.value ?? null; app.graph.remove(n); }
      return out; })()""")
    await cdp.js(f"""(() => {{ app.clean?.(); const g = app.graph; g.clear();
      const add = (type, x, y) => {{ const n = LiteGraph.createNode(type); n.pos = [x, y]; g.add(n); return n; }};
      const li = add('LoadImage', 40, 100), sc = add('ImageScale', 360, 100),
            fd = add('FastDragPoints', 680, 100), pa = add('PreviewAny', 1200, 100);
      li.widgets.find(w => w.name === 'image').value = {json.dumps(args.image)};
      sc.widgets.find(w => w.name === 'width').value = 256; sc.widgets.find(w => w.name === 'height').value = 192;
      li.connect(0, sc, 0); sc.connect(0, fd, 0); fd.connect(0, pa, 0);
      window.__fd = fd; window.__scale = sc; app.canvas.ds.scale = 1; app.canvas.ds.offset = [-560, 0];
      app.canvas.setDirty(true, true); return true; }})()""")
    await asyncio.sleep(0.8)
    R["before_run"] = {"image": await cdp.js(f"!!{ED}.image"), "message": await cdp.js(
        f"(() => {{ const e = {ED}; return e.layout() ? null : 'no picture'; }})()")}
    # Load Image's full-size mask on 'mask' while the picture goes through Image Scale: said before the run
    await cdp.js("window.__li = app.graph.nodes.find(n => n.type === 'LoadImage'); window.__li.connect(1, window.__fd, 1);"
                 " app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.5)
    R["status_scaled_image_full_mask"] = (await status_facts(cdp))["text"]
    await cdp.js("window.__fd.disconnectInput(1); app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.3)
    entry = await queue_and_wait(cdp, args)
    R["first_run"] = {"status": entry and entry["status"].get("status_str"), "error": error_message(entry),
                      "notice": entry and entry.get("outputs", {}).get(str(await cdp.js("window.__fd.id")), {}).get("fastdrag_notice")}
    await asyncio.sleep(0.5)
    R["first_run"]["dialogs"] = await cdp.js("document.querySelectorAll('[role=dialog]').length")
    try:
        await cdp.wait(f"{ED}.image && {ED}.imageRef && {ED}.imageRef.type === 'temp'", timeout=10)
        R["picture_after_run"] = {"size": await cdp.js(f"{ED}.imageSize()"), "stale": await cdp.js(f"{ED}.stale")}
    except TimeoutError:
        R["picture_after_run"] = None
        return
    R["status_no_mask"] = await status_facts(cdp)
    await shoot(cdp, args, "upstream_no_drags_yet.png")
    # press-and-drag: hold the button, move (rubber band), release on the target
    a, b = (70, 80), (150, 60)
    pa, pb = await pixel(cdp, *a), await pixel(cdp, *b)
    await cdp.mouse("mouseMoved", *pa, button="none")
    await cdp.mouse("mousePressed", *pa, button="left", buttons=1)
    for k in range(1, 7):
        t = k / 8
        await cdp.mouse("mouseMoved", pa[0] + (pb[0] - pa[0]) * t, pa[1] + (pb[1] - pa[1]) * t, button="left", buttons=1)
        await asyncio.sleep(0.02)
    R["mid_drag"] = await cdp.js(f"(() => {{ const e = {ED}; return {{pressed: !!e.pressed, moved: !!(e.pressed && e.pressed.moved),"
                                 f" hover: e.hover, drags: e.state().drags.length}}; }})()")
    await shoot(cdp, args, "upstream_rubber_band.png", node=True)
    await cdp.mouse("mouseMoved", *pb, button="left", buttons=1)
    await cdp.mouse("mouseReleased", *pb, button="left", buttons=0)
    await asyncio.sleep(0.2)
    R["points_after_press_drag"] = await cdp.js(POINTS)
    R["target_dot"] = await dot_rings(cdp, *b)
    R["handle_dot"] = await dot_rings(cdp, *a)
    # a plain click still starts a click-click drag
    await cdp.click(*await pixel(cdp, 200, 150))
    R["pending_after_click"] = await cdp.js(f"{ED}.pending")
    await cdp.key("Escape", "Escape", 27)
    entry = await queue_and_wait(cdp, args)
    R["second_run"] = {"status": entry and entry["status"].get("status_str"), "error": error_message(entry)}
    # rewire: another size upstream -> the shown picture is stale until the next run
    await asyncio.sleep(0.5)
    R["key_before"] = await cdp.js(f"{ED}.runUpstreamKey")
    await cdp.js("window.__scale.widgets.find(w => w.name === 'width').value = 224; app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.5)
    R["key_after"] = await cdp.js(f"[{ED}.runUpstreamKey, {ED}.stale, {ED}.useRun, {ED}.imageRef, {ED}.runImageRef]")
    try:
        await cdp.wait(f"{ED}.stale", timeout=3)
        R["stale_after_rewire"] = True
    except TimeoutError:
        R["stale_after_rewire"] = False
    R["status_stale"] = await status_facts(cdp)
    await shoot(cdp, args, "upstream_stale.png", node=True)
    entry = await queue_and_wait(cdp, args)
    try:
        await cdp.wait(f"!{ED}.stale && {ED}.imageSize() && {ED}.imageSize()[0] === 224", timeout=10)
        R["after_rerun"] = {"stale": False, "size": await cdp.js(f"{ED}.imageSize()")}
    except TimeoutError:
        R["after_rerun"] = {"stale": await cdp.js(f"{ED}.stale"), "size": await cdp.js(f"{ED}.imageSize()")}
    R["third_run"] = {"status": entry and entry["status"].get("status_str"), "error": error_message(entry)}


async def canvas_rgb(cdp, x, y):
    """The editor canvas's colour at the canvas position of image pixel (x, y)."""
    return await cdp.js(f"""(() => {{ const e = {ED}, L = e.layout(), dpr = window.devicePixelRatio || 1;
      const [cx, cy] = e.toCanvas([{x}, {y}], L);
      const p = e.canvas.getContext('2d').getImageData(Math.round(cx * dpr), Math.round(cy * dpr), 1, 1).data;
      return [p[0], p[1], p[2]]; }})()""")


async def dragbench_scenario(cdp, args, R):
    """DragBench Sample -> FastDragPoints (image, points and mask linked): before a run the editor
    draws no drags (not the widget's); after it, the drags the node used, read-only and marked;
    'Copy to widget' makes them editable; the next run uses the edited drags."""
    stale = json.dumps({"version": 1, "width": 96, "height": 80, "drags": [{"handle": [10, 10], "target": [20, 20]}]})
    await cdp.js(f"""(() => {{ app.clean?.(); const g = app.graph; g.clear();
      const add = (type, x, y) => {{ const n = LiteGraph.createNode(type); n.pos = [x, y]; g.add(n); return n; }};
      const db = add('DragBenchSample', 40, 100), fd = add('FastDragPoints', 400, 100), pa = add('PreviewAny', 940, 100);
      db.widgets.find(w => w.name === 'folder').value = {json.dumps(args.dragbench)};
      db.widgets.find(w => w.name === 'sample').value = '0';
      fd.widgets.find(w => w.name === 'points').value = {json.dumps(stale)};
      const slot = (name) => fd.inputs.findIndex(i => i.name === name);
      db.connect(0, fd, slot('image')); db.connect(1, fd, slot('mask')); db.connect(2, fd, slot('points'));
      fd.connect(0, pa, 0);
      window.__fd = fd; app.canvas.ds.scale = 1; app.canvas.ds.offset = [-300, 60];
      app.canvas.setDirty(true, true); return true; }})()""")
    await asyncio.sleep(0.6)
    facts = f"""(() => {{ const e = {ED}, s = e.state(); return {{linked: e.pointsLinked(), drags: s.drags,
      state_linked: !!s.linked, status: e.status.textContent, copy_shown: e.copyButton.style.display !== 'none',
      widget: window.__fd.widgets.find(w => w.name === 'points').value,
      points_link: window.__fd.inputs.find(i => i.name === 'points').link}}; }})()"""
    R["before_run"] = await cdp.js(facts)
    entry = await queue_and_wait(cdp, args)
    R["first_run"] = {"status": entry and entry["status"].get("status_str"), "error": error_message(entry)}
    try:
        await cdp.wait(f"{ED}.image && {ED}.runPoints && {ED}.imageRef.type === 'temp'", timeout=10)
    except TimeoutError:
        R["after_run"] = None
        return
    await asyncio.sleep(0.3)
    R["after_run"] = await cdp.js(facts)
    R["after_run"]["size"] = await cdp.js(f"{ED}.imageSize()")
    R["after_run"]["mask_overlay"] = await cdp.js(f"!!({ED}.mask && {ED}.mask.overlay)")
    R["after_run"]["node_used"] = entry and entry["outputs"].get(str(await cdp.js("window.__fd.id")), {}).get("fastdrag_points")
    # the canvas at the expected image pixels: handle dots red, target dots blue
    R["dot_colours"] = [{"handle": await canvas_rgb(cdp, *h), "target": await canvas_rgb(cdp, *t)}
                        for h, t in json.loads(args.dragbench_drags)]
    await shoot(cdp, args, "dragbench_linked.png", node=True)
    await shoot(cdp, args, "dragbench_page.png")
    # read-only: a click on the picture changes nothing, and the status line says why
    await cdp.click(*await pixel(cdp, 20, 66))
    await asyncio.sleep(0.2)
    R["after_click"] = await cdp.js(facts)
    R["after_click"]["pending"] = await cdp.js(f"{ED}.pending")
    # Copy to widget: the link goes, the drags are the widget's, editable
    await cdp.click(*await center(cdp, "copyButton"))
    await asyncio.sleep(0.3)
    R["after_copy"] = await cdp.js(facts)
    await cdp.click(*await pixel(cdp, 20, 66))
    await cdp.click(*await pixel(cdp, 30, 60))
    await asyncio.sleep(0.2)
    R["after_edit"] = await cdp.js(facts)
    entry = await queue_and_wait(cdp, args)
    R["second_run"] = {"status": entry and entry["status"].get("status_str"), "error": error_message(entry),
                       "text": entry and [t for out in entry["outputs"].values() for t in out.get("text", [])]}
    await shoot(cdp, args, "dragbench_copied.png", node=True)
    # Ctrl+Z re-creates the node: the editor shows the last run's picture again; once more: the link is back
    for step in ("undo_edit", "undo_copy"):
        await cdp.js(f"{ED}.root.focus(); true")
        await ctrl_z(cdp)
        try:
            await cdp.wait("(() => { const n = app.graph.nodes.find(n => n.type === 'FastDragPoints');"
                           " return !!(n && n !== window.__fd && n.fastdragEditor && n.fastdragEditor.image); })()",
                           timeout=10)
        except TimeoutError:
            pass
        await find_node(cdp)
        await asyncio.sleep(0.2)
        R[step] = await cdp.js(facts)
        R[step]["picture"] = await cdp.js(f"{ED}.imageRef && {ED}.imageRef.type")
    # the front end's own Primitive node into `points` (it copies its text into the widget, the node
    # gets it inline): shown at once, before any run, read-only; Copy to widget keeps it as the node's own
    prim = json.dumps({"version": 1, "width": 96, "height": 80, "drags": [{"handle": [40, 30], "target": [52, 36]}]})
    await cdp.js("""(() => { const g = app.graph, fd = g.nodes.find(n => n.type === 'FastDragPoints');
      const p = LiteGraph.createNode('PrimitiveNode'); p.pos = [40, 420]; g.add(p);
      p.connect(0, fd, fd.inputs.findIndex(i => i.name === 'points')); window.__fd = fd; window.__prim = p;
      return true; })()""")
    await asyncio.sleep(0.3)
    await cdp.js(f"""(() => {{ const w = window.__prim.widgets[0]; w.value = {json.dumps(prim)}; w.callback?.(w.value);
      app.canvas.setDirty(true, true); return true; }})()""")
    await asyncio.sleep(0.4)
    R["primitive"] = await cdp.js(facts)
    await cdp.click(*await center(cdp, "copyButton"))
    await asyncio.sleep(0.3)
    R["primitive_copied"] = await cdp.js(facts)


async def ctrl_z(cdp):
    for kind in ("rawKeyDown", "keyUp"):
        await cdp.call("Input.dispatchKeyEvent", type=kind, key="z", code="KeyZ", windowsVirtualKeyCode=90, modifiers=2)


async def set_setting(args, key, value):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{args.url}/settings/{key}", data=json.dumps(value)) as r:
            assert r.status == 200, await r.text()


async def vue_scenario(cdp, args, R):
    """The "Nodes 2.0" (Vue) renderer: the editor scenario up to Clear, and the canvas follows the
    node when the user resizes it with its corner handle."""
    await set_setting(args, "Comfy.VueNodes.Enabled", True)
    async with aiohttp.ClientSession() as http:  # a fresh execution cache: the same prompt runs (and sends its image) again
        async with http.post(f"{args.url}/free", data=json.dumps({"free_memory": True})) as r:
            assert r.status == 200
    try:
        await open_app(cdp, args.url)
        with open(args.workflow) as f:
            wf = json.load(f)
        R["resize"] = {"loaded": await load_graph(cdp, wf)}
        await asyncio.sleep(0.8)
        handle = await cdp.js(f"""(() => {{ const n = {ED}.root.closest('.lg-node');
          const h = n && [...n.querySelectorAll('*')].find(e => getComputedStyle(e).cursor === 'se-resize');
          if (!h) return null; const r = h.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        R["resize"]["canvas_before"] = await cdp.js(f"{ED}.canvas.clientHeight")
        if handle:
            await cdp.drag(handle, (handle[0] + 60, handle[1] + 160), steps=8)
            await asyncio.sleep(0.8)
            R["resize"]["canvas_after"] = await cdp.js(f"{ED}.canvas.clientHeight")
            R["resize"]["node_after"] = await cdp.js(f"{ED}.root.closest('.lg-node').getBoundingClientRect().height")
            await shoot(cdp, args, "vue_resized.png")
        await editor_scenario(cdp, args, R, args.workflow, prefix="vue_")
        if getattr(args, "run_lines", None):
            R["after_run"] = await layouts_after_run(cdp, args, args.run_lines, prefix="vue_")
    finally:
        await set_setting(args, "Comfy.VueNodes.Enabled", False)


SCENARIOS = {"templates": templates_scenario, "examples": examples_scenario, "upstream": upstream_scenario,
             "dragbench": dragbench_scenario,
             "editor": lambda cdp, args, R: editor_scenario(cdp, args, R, args.workflow),
             "vue": vue_scenario}


async def main_async(args):
    profile = tempfile.mkdtemp(prefix="fastdrag_chromium_")
    # port 0: Chromium picks a free port and writes it to DevToolsActivePort (no fixed or raced port)
    proc = subprocess.Popen([args.chromium, *FLAGS, "--window-size=1400,1000", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    R = {"errors": []}
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.time()
            active = os.path.join(profile, "DevToolsActivePort")
            port = None
            while True:
                try:
                    if port is None:
                        with open(active) as f:
                            port = int(f.readline().strip())
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t["type"] == "page"]
                    if targets:
                        break
                except (aiohttp.ClientError, OSError, ValueError):
                    pass
                if time.time() - t0 > 30:
                    raise RuntimeError("chromium DevTools endpoint did not come up")
                await asyncio.sleep(0.2)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = CDP(ws)
                reader = asyncio.create_task(cdp.reader())
                for domain in ("Runtime", "Page", "Log"):
                    await cdp.call(f"{domain}.enable")
                await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                               mobile=False)
                try:
                    if args.thumbnails:  # the minimap reads its setting when the app starts
                        await set_setting(args, "Comfy.Minimap.Visible", False)
                    await open_app(cdp, args.url)
                except Exception:
                    R["errors"].append(traceback.format_exc())
                names = args.scenarios.split(",")
                if args.thumbnails and "templates" in names and "examples" in names:  # write them, then show them
                    names.remove("templates")
                    names.insert(names.index("examples") + 1, "templates")
                for name in names:
                    section = R[name] = {"errors": []}
                    t1 = time.time()
                    cdp.console_mark = len(cdp.console)
                    try:
                        await SCENARIOS[name](cdp, args, section)
                    except Exception:
                        section["errors"].append(traceback.format_exc())
                    section["seconds"] = round(time.time() - t1, 1)
                    section["console"] = cdp.console[cdp.console_mark:]
                R["console"] = cdp.console
                reader.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    return R


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--workflow", help="UI-format workflow with a FastDragPoints node (editor and vue scenarios)")
    ap.add_argument("--workflows", help="the pack's workflows/ folder (examples scenario)")
    ap.add_argument("--pack-name", default="comfyui-fastdrag", help="the pack's folder name in custom_nodes")
    ap.add_argument("--image", default="fastdrag_editor_test.png", help="an input image (upstream scenario)")
    ap.add_argument("--ckpt", help="checkpoint name to run the first template with (examples scenario)")
    ap.add_argument("--run-image", default="fastdrag_test.png", help="the picture that template is run on")
    ap.add_argument("--run-workflow", default="FastDrag edit in one node",
                    help="the template run on the test checkpoint (an SD1.5 FastDragEdit graph)")
    ap.add_argument("--dragbench", default="fastdrag_dragbench_ui",
                    help="a DragBench folder in the server's input folder (dragbench scenario)")
    ap.add_argument("--dragbench-drags", default="[]",
                    help="JSON [[handle, target], ...] of its first sample, image pixels (dragbench scenario)")
    ap.add_argument("--thumbnails", help="write <workflow>.jpg template thumbnails into this folder")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    R = asyncio.run(main_async(args))
    print("RESULT " + json.dumps(R))


if __name__ == "__main__":
    main()
