#!/usr/bin/env python3
"""Drive the FastDragPoints editor in the real ComfyUI front end, in headless Chromium, over the
DevTools protocol. Run with ComfyUI's venv python (needs aiohttp); test_editor_browser.py starts
the server and this script, then asserts on the JSON this script prints as its last line.

Every interaction is a real input event (CDP Input.dispatchMouseEvent / dispatchKeyEvent) at the
viewport position of an image pixel, so the canvas's own event handlers and coordinate mapping are
what is tested; JS evaluation is only used to read state (widget values, node geometry, history).
"""
import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            if method == "Runtime.exceptionThrown":
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


async def scenario(cdp, args, R):
    http_base = args.url
    await cdp.call("Page.navigate", url=args.url)
    await cdp.wait("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app"
                   " && window.comfyAPI.app.app.graph && window.comfyAPI.app.app.canvas)", timeout=90, every=0.25)
    await cdp.js("window.app = window.comfyAPI.app.app; true")
    R["extension_loaded"] = await cdp.wait(
        "app.extensionManager && (window.comfyAPI.app.app.extensions || []).some(e => e.name === 'fastdrag.points_editor')"
        " || !!LiteGraph.registered_node_types['FastDragPoints']", timeout=30)
    await asyncio.sleep(1.0)  # let the startup workflow restore finish before replacing the graph

    # ---- load the workflow (UI format); retry: the startup restore can still replace the graph
    with open(args.workflow) as f:
        wf = json.load(f)
    for _ in range(3):
        await cdp.js(f"Promise.resolve(app.loadGraphData({json.dumps(wf)})).then(() => true)")
        t0 = time.time()
        ok = False
        while time.time() - t0 < 10:
            if await find_node(cdp):
                ok = True
                break
            await asyncio.sleep(0.2)
        if ok:
            break
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
    await shoot(cdp, args, "editor_after_run.png")
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
    await shoot(cdp, args, "editor_node.png", node=True)

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
    await cdp.js("app.canvas.setDirty(true, true); true")
    await asyncio.sleep(0.3)

    # ---- screenshots: the page, and the node with the preview on (the one without is taken above)
    await shoot(cdp, args, "editor_browser.png")
    await shoot(cdp, args, "editor_node_preview.png", node=True)
    R["screenshots"] = sorted(f for f in os.listdir(args.out_dir) if f.endswith(".png"))

    # ---- Clear, then Ctrl+Z brings the drags back; the JSON button shows the points widget
    # (an edit on the canvas first: it ends with a mouseup, on which ComfyUI records the graph state)
    await cdp.drag(await pixel(cdp, *EXTERNAL[1]), await pixel(cdp, EXTERNAL[1][0] + 6, EXTERNAL[1][1] + 4), steps=3)
    await asyncio.sleep(0.2)
    before = await cdp.js(POINTS)
    cb = await center(cdp, "clearButton")
    await cdp.click(*cb)
    await asyncio.sleep(0.1)
    R["drags_after_clear"] = len((await cdp.js(POINTS))["drags"])
    if args.no_graph_undo:  # (the Vue node renderer keeps the old node's widget element after it)
        await asyncio.sleep(0.3)
        await cdp.js("window.__fdEd = null; true")
        R["removed"] = None
        return
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


async def example_scenario(cdp, args, R):
    """Load a shipped example workflow: the editor shows LoadImage's file and its drags; add one."""
    await cdp.call("Page.navigate", url=args.url)
    await cdp.wait("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app"
                   " && window.comfyAPI.app.app.graph && window.comfyAPI.app.app.canvas)", timeout=90, every=0.25)
    await cdp.js("window.app = window.comfyAPI.app.app; true")
    await asyncio.sleep(1.0)
    with open(args.example) as f:
        wf = json.load(f)
    ok = False
    for _ in range(3):
        await cdp.js(f"Promise.resolve(app.loadGraphData({json.dumps(wf)})).then(() => true)")
        t0 = time.time()
        while time.time() - t0 < 10 and not ok:
            ok = await find_node(cdp)
            await asyncio.sleep(0.2)
        if ok:
            break
    R["workflow_loaded"] = ok
    if not ok:
        return
    # bring the node into view at scale 1, top left
    await cdp.js("(() => { const n = window.__fd, ds = app.canvas.ds; ds.scale = 1;"
                 " ds.offset = [120 - n.pos[0], 140 - n.pos[1]]; app.canvas.setDirty(true, true); return true; })()")
    await asyncio.sleep(0.6)
    R["image_size"] = await cdp.js(f"{ED}.imageSize()")
    R["image_source"] = await cdp.js(f"{ED}.imageRef")
    R["points_before"] = await cdp.js(POINTS)
    R["drags_drawn"] = await cdp.js(f"{ED}.state().drags.length")
    w, h = R["image_size"]
    a, b = (round(w * 0.25), round(h * 0.7)), (round(w * 0.3), round(h * 0.6))
    R["clicked"] = [a, b]
    await cdp.click(*await pixel(cdp, *a))
    await cdp.click(*await pixel(cdp, *b))
    await asyncio.sleep(0.1)
    R["points_after"] = await cdp.js(POINTS)
    await shoot(cdp, args, "example_" + os.path.splitext(os.path.basename(args.example))[0] + ".png")


async def main_async(args):
    port = free_port()
    profile = tempfile.mkdtemp(prefix="fastdrag_chromium_")
    proc = subprocess.Popen([args.chromium, *FLAGS, "--window-size=1400,1000", f"--remote-debugging-port={port}",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    R = {"errors": []}
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.time()
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t["type"] == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
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
                    await (example_scenario if args.example else scenario)(cdp, args, R)
                except Exception:
                    R["errors"].append(traceback.format_exc())
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
    ap.add_argument("--workflow", help="UI-format workflow with a FastDragPoints node (the full scenario)")
    ap.add_argument("--example", help="instead: a shipped example workflow (short scenario)")
    ap.add_argument("--no-graph-undo", action="store_true",
                    help="stop after Clear: no Ctrl+Z (graph undo), JSON toggle or removal steps")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    R = asyncio.run(main_async(args))
    print("RESULT " + json.dumps(R))


if __name__ == "__main__":
    main()
