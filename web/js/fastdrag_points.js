// FastDrag points editor: a canvas on the FastDragPoints node to place handle -> target drags.
//
// State lives only in the node's `points` STRING widget, as
//   {"version": 1, "width": W, "height": H, "drags": [{"handle": [x, y], "target": [x, y]}, ...]}
// in image pixels (x right, y down), so it is saved in the workflow, sent in the prompt and
// restored on load. The canvas widget is never serialised and no image data enters the workflow:
// the picture is fetched from /view (the LoadImage file upstream, or the image the node sends
// back in its `ui` message after a run). The warp preview is computed by the pack's Python
// (POST /fastdrag/preview, fastdrag_core) so there is one implementation of the maths.
//
// Controls: press on the picture and drag to the target (a rubber band follows while the button is
// held), or click = handle, next click = its target; drag a point to move it; right-click a point
// (or select it and press Delete) removes its pair; Undo (this editor's steps) and Clear; Esc
// cancels a lone handle. Ctrl+Z is ComfyUI's own graph undo, which restores the points text too:
// each edit (a whole point drag included) is reported to its change tracker as one change.
//
// Linked points (`points` fed by a link, e.g. DragBenchSample's): the widget is not used, so the
// editor draws what the node itself used in the last run (FastDragPoints sends its validated points
// back with its picture), read-only and marked as coming from the link; "Copy to widget" removes the
// link and puts those points into the widget, where they can be edited.

import { MAX_DRAGS, canvasToImage, fitLayout, formatPoints, imageToCanvas, parseAnnotated, parsePoints, scaleDrags }
  from "./fastdrag_points_model.js";

const { app } = window.comfyAPI.app;
const { api } = window.comfyAPI.api;

const NODE_CLASS = "FastDragPoints";
const POINTS_WIDGET = "points";
// The canvas widget's name carries a per-editor serial: the "Nodes 2.0" (Vue) renderer keys a node's
// widget rows by index and name and puts a DOM widget's element into its row only when the row is
// mounted. ComfyUI's graph undo re-creates the node (same id) with a new editor; under the same name
// the row would stay mounted and keep showing the removed editor's element. A new name makes a new
// row, which mounts the new editor.
const EDITOR_WIDGET = "fastdrag_editor";
let editorSerial = 0;
const HIT_RADIUS = 9; // css px
const HANDLE_COLOR = "#e8363a";
const TARGET_COLOR = "#3a6df0";
const PREVIEW_DEBOUNCE_MS = 40;
const DRAG_THRESHOLD = 4;   // css px: a press that moves further places a drag, otherwise it is a click
const PICTURE_EVENT = "fastdrag.picture";  // FastDragPoints with no drags sends its picture this way
const NO_MASK_HINT = "no mask: the whole picture moves, so the preview shows holes everywhere; " +
  "to move one object, paint a mask (Load Image's mask editor, or Load Image (as Mask)) and connect it to 'mask'";
const MAX_UNDO = 100;
const LINKED_READ_ONLY = "the drags come from the link (read-only here): press 'Copy to widget' to edit them in this editor";
const SYNC_MS = 250;  // the Vue renderer draws no LiteGraph frames: poll the graph this often there
const STATUS_LINES = 4;  // the status line's reserved height, in lines
const OVER_LIMIT_COLOR = "#8a8a8a";  // drags past MAX_DRAGS: drawn, numbered, removable; the node refuses them

const refKey = (r) => (r ? `${r.type}/${r.subfolder}/${r.filename}` : "");
const query = (r) => `filename=${encodeURIComponent(r.filename)}&subfolder=${encodeURIComponent(r.subfolder || "")}` +
  `&type=${encodeURIComponent(r.type || "input")}`;
// The picture as LoadImage reads it (EXIF orientation applied, alpha dropped: LoadImage keeps the
// mask in alpha, painted areas would otherwise show as holes), served by the pack's route.
const imageURL = (r) => api.apiURL(`/fastdrag/image?${query(r)}`);
// The mask overlay reads the file itself, alpha included.
const viewURL = (r) => api.apiURL(`/view?${query(r)}`);

// ---------------------------------------------------------------------------------------------
// graph helpers

function linkOf(graph, id) {
  if (id == null || !graph) return null;
  return graph.getLink?.(id) ?? (graph.links instanceof Map ? graph.links.get(id) : graph.links?.[id]) ?? null;
}

/** The node and output slot feeding `inputName` of `node`, through legacy Reroute nodes. */
function upstream(node, inputName) {
  const graph = node.graph;
  const input = node.inputs?.find((i) => i.name === inputName);
  let link = linkOf(graph, input?.link);
  for (let hops = 0; link && hops < 16; hops++) {
    const origin = graph.getNodeById(link.origin_id);
    if (!origin) return null;
    if (origin.type !== "Reroute") return { node: origin, slot: link.origin_slot };
    link = linkOf(graph, origin.inputs?.[0]?.link);
  }
  return null;
}

/** A signature of everything that feeds `inputName` of `node` (nodes, links, widget values), to
 *  tell when a picture made by an earlier run no longer matches the graph. */
function upstreamKey(node, inputName) {
  const graph = node.graph;
  const parts = [];
  const seen = new Set();
  const visit = (n, input, depth) => {
    const link = linkOf(graph, n.inputs?.find((i) => i.name === input)?.link);
    if (!link) { parts.push(`${n.id}.${input}:-`); return; }
    parts.push(`${n.id}.${input}<${link.origin_id}/${link.origin_slot}`);
    const origin = graph.getNodeById(link.origin_id);
    if (!origin || seen.has(origin.id) || depth > 24 || seen.size > 200) return;
    seen.add(origin.id);
    const values = (origin.widgets ?? []).filter((w) => w.serialize !== false && typeof w.value !== "object")
      .map((w) => String(w.value));
    parts.push(`${origin.id}=${origin.type}(${values.join("|")})${origin.mode ?? 0}`);
    for (const i of origin.inputs ?? []) visit(origin, i.name, depth + 1);
  };
  if (graph) visit(node, inputName, 0);
  return parts.join(";");
}

/** A file-picking loader (LoadImage, LoadImageMask, ...): its `image` combo value as a ref. */
function loaderRef(origin) {
  const w = origin?.widgets?.find((x) => x.name === "image");
  if (!w || typeof w.value !== "string" || !w.value || w.type !== "combo") return null;
  return parseAnnotated(w.value);
}

/** What the node fed by this node's `drag` output will do with the drags (through Reroutes): a
 *  FastDragEdit's `task`, or a FastDragMoveObject ("move object" / "copy object"), with its `overlap`
 *  and the loader feeding its `fill_region`; null when neither is connected. */
function downstreamTask(node) {
  const graph = node.graph;
  const consumers = [];
  const follow = (n, slot, depth) => {
    for (const id of n.outputs?.[slot]?.links ?? []) {
      const link = linkOf(graph, id);
      const target = link && graph.getNodeById(link.target_id);
      if (!target) continue;
      if (target.type === "Reroute" && depth < 16) follow(target, 0, depth + 1);
      else consumers.push(target);
    }
  };
  if (graph) follow(node, 0, 0);
  const widget = (n, name) => n.widgets?.find((w) => w.name === name)?.value;
  for (const n of consumers) {
    let task = null;
    if (n.type === "FastDragEdit") task = widget(n, "task") ?? "drag";
    else if (n.type === "FastDragMoveObject") task = `${widget(n, "mode") ?? "move"} object`;
    if (!task) continue;
    let fill = null;
    const f = task !== "drag" ? upstream(n, "fill_region") : null;
    const ref = f ? loaderRef(f.node) : null;
    if (ref) {
      const channel = f.node.widgets?.find((w) => w.name === "channel");
      if (channel) fill = { ...ref, channel: String(channel.value) };  // LoadImageMask
      else if (f.slot === 1) fill = { ...ref, channel: "alpha" };       // LoadImage's MASK
    }
    return { task, overlap: widget(n, "overlap") ?? "keep object", fill_region: fill, from: n.type };
  }
  return null;
}

const TASKS = ["auto", "drag", "move object", "copy object"];
const TASK_PROPERTY = "fastdrag_preview_task";

// ---------------------------------------------------------------------------------------------

class DragEditor {
  constructor(node) {
    this.node = node;
    this.pointsWidget = node.widgets?.find((w) => w.name === POINTS_WIDGET) ?? null;
    this.image = null;          // HTMLImageElement
    this.imageRef = null;       // {filename, subfolder, type}
    this.mask = null;           // {ref, channel, key, overlay: canvas|null}
    this.runImageRef = null;    // from the last onExecuted
    this.runMaskRef = null;
    this.runUpstreamKey = null; // what fed `image` when that picture was made (stale when it differs)
    this.runPoints = null;      // the points JSON the node used in that run (validated, image pixels)
    this.runPointsFrom = null;  // [node id, slot] of the link they came from; null: the widget's
    this.runPointsKey = null;   // what fed `points` then (linked drags are stale when it differs)
    this.runError = null;       // the node refused its input in that run: its message
    this.wasLinked = undefined; // `points` linked at the last sync
    this.pointsStale = false;   // linked drags shown are from a run before the nodes feeding `points` changed
    this.notice = "";           // why the last action did nothing (read-only drags), until the next change
    this.jsonWanted = false;    // the JSON button showed the points widget
    this.stale = false;
    this.pressed = null;        // {start: [x, y] image px, client: [x, y], moved} a press on the picture
    this.hover = null;          // image pixel under the pointer (rubber band after a first click)
    this.useRun = false;
    this.lastGraphKey = null;
    this.pending = null;        // a handle waiting for its target
    this.dragging = null;       // {index, end: "handle"|"target"}
    this.selected = -1;
    this.undoStack = [];
    this.preview = { on: false, img: null, url: null, seq: 0, inFlight: false, again: false, timer: 0,
                     ms: null, serverMs: null, holes: null, grid: null, error: null, count: 0 };
    this.parsedText = undefined;
    this.parsed = null;
    this.message = "";
    this.buildDom();
  }

  // -------------------------------------------------------------------------------- DOM
  buildDom() {
    const root = document.createElement("div");
    root.className = "fastdrag-editor";
    root.tabIndex = 0;
    root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;gap:3px;outline:none;" +
      "user-select:none;-webkit-user-select:none;" +
      "box-sizing:border-box;font:11px sans-serif;color:var(--input-text,#ddd)";
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;align-items:center;gap:4px;flex:0 0 auto;flex-wrap:wrap";
    const button = (label, title, fn) => {
      const b = document.createElement("button");
      b.textContent = label;
      b.title = title;
      b.style.cssText = "font:11px sans-serif;padding:1px 6px;cursor:pointer;border-radius:4px;" +
        "border:1px solid var(--border-color,#555);background:var(--comfy-input-bg,#333);color:inherit";
      b.addEventListener("click", (e) => { e.stopPropagation(); fn(); });
      bar.append(b);
      return b;
    };
    this.undoButton = button("Undo", "Undo the last change made in this editor", () => this.undo());
    this.clearButton = button("Clear", "Remove all drags", () => this.clear());
    const label = document.createElement("label");
    label.style.cssText = "display:flex;align-items:center;gap:2px;cursor:pointer";
    this.previewToggle = document.createElement("input");
    this.previewToggle.type = "checkbox";
    this.previewToggle.className = "fastdrag-preview-toggle";
    this.previewToggle.addEventListener("change", () => this.setPreview(this.previewToggle.checked));
    label.append(this.previewToggle, "Preview warp");
    label.title = "Show the warp (LWF + relocation + BNNI, on the latent grid) computed by fastdrag_core; " +
      "magenta cells are the holes BNNI fills";
    bar.append(label);
    this.buildTaskSelect(bar);
    this.jsonButton = button("JSON", "Show or hide the points JSON widget", () => this.toggleJson());
    this.copyButton = button("Copy to widget", "The drags come from the link into 'points'. Remove that link and " +
      "copy the drags the node used in the last run into this node's own points, to edit them here",
      () => this.copyLinkedToWidget());
    this.copyButton.style.display = "none";  // shown while `points` is linked
    this.status = document.createElement("div");
    this.status.className = "fastdrag-status";
    // its own row, wrapped: never cut off, whatever the node's width
    // at least STATUS_LINES lines tall: a hint that wraps onto one more line does not move the picture
    this.status.style.cssText = "opacity:.85;white-space:normal;overflow-wrap:anywhere;line-height:1.3;flex:0 0 auto;" +
      `min-height:${STATUS_LINES * 1.3}em`;
    const canvas = document.createElement("canvas");
    canvas.className = "fastdrag-canvas";
    // min-height: where the widget's box has no fixed height (the Vue node renderer), keep a canvas
    canvas.style.cssText = "flex:1 1 auto;min-height:180px;width:100%;display:block;border-radius:4px;" +
      "background:#1b1b1b;touch-action:none;cursor:crosshair";
    root.append(bar, this.status, canvas);
    this.root = root;
    this.canvas = canvas;

    const on = (el, type, fn, opts) => el.addEventListener(type, fn, opts);
    on(canvas, "pointerdown", (e) => this.onPointerDown(e));
    on(canvas, "pointermove", (e) => this.onPointerMove(e));
    on(canvas, "pointerup", (e) => this.onPointerUp(e));
    on(canvas, "pointercancel", (e) => this.onPointerUp(e));
    on(canvas, "contextmenu", (e) => this.onContextMenu(e));
    on(canvas, "pointerleave", () => { if (this.hover) { this.hover = null; this.draw(); } });
    on(root, "keydown", (e) => this.onKeyDown(e));
    this.resizeObserver = new ResizeObserver(() => { this.fitVueNode(); this.draw(); });
    this.resizeObserver.observe(canvas);
    this.onPicture = (e) => this.onPictureEvent(e.detail);
    api.addEventListener(PICTURE_EVENT, this.onPicture);
    // sync() runs on every LiteGraph redraw of the node (onDrawForeground). The Vue node renderer draws
    // none and offers no hook for what sync() follows upstream (a Load Image's file chosen in its combo
    // changes no state ComfyUI's change tracker checks, so no "graphChanged" event comes): there the
    // editor polls; in the LiteGraph renderer the timer does nothing.
    this.syncTimer = setInterval(() => { if (this.root.closest(".lg-node") && !document.hidden) this.sync(); }, SYNC_MS);
    // the points typed into the JSON widget (in the Vue renderer too, which calls widget callbacks)
    const pw = this.pointsWidget;
    if (pw) {
      const prev = pw.callback;
      pw.callback = (...args) => { const r = prev?.apply(pw, args); if (!this.dead) this.changed(); return r; };
    }

    this.widget = this.node.addDOMWidget(`${EDITOR_WIDGET}_${++editorSerial}`, "FASTDRAG_EDITOR", root, {
      serialize: false,     // not in the prompt
      hideOnZoom: false,
      getValue: () => undefined,
      setValue: () => {},
      getMinHeight: () => 220,
    });
    this.widget.serialize = false;  // not in the workflow's widgets_values
  }

  toggleJson() {
    if (!this.pointsWidget) return;
    this.jsonWanted = !!this.pointsWidget.hidden;
    this.showPointsRow();
  }

  /** The points widget's row is shown when asked for (JSON) and while it is linked: its socket and
   *  name then show where the link ends. */
  showPointsRow() {
    if (!this.pointsWidget) return;
    this.setJsonShown(this.jsonWanted || this.pointsLinked());
    this.node.setSize?.([this.node.size[0], Math.max(this.node.size[1], this.node.computeSize?.()[1] ?? 0)]);
    this.node.setDirtyCanvas?.(true, true);
  }

  setJsonShown(shown) {
    const w = this.pointsWidget;
    w.hidden = !shown;                      // the LiteGraph canvas renderer
    if (w.options) w.options.hidden = !shown;  // the Vue node renderer
  }

  // -------------------------------------------------------------------------------- state
  get text() { return this.pointsWidget?.value ?? ""; }

  /** The points input is fed by a link (widget converted to an input): the widget is not used. */
  pointsLinked() {
    return this.node.inputs?.find((i) => i.name === POINTS_WIDGET)?.link != null;
  }

  /** The points the editor shows: the widget's, or when `points` is linked, those the node used in
   *  its last run ("" before any run). */
  sourceText() {
    if (!this.pointsLinked() || this.primitiveLinked()) return this.text;
    return this.runPointsFrom ? (this.runPoints ?? "") : "";  // a run on the widget's points shows nothing here
  }

  /** `points` is fed by the front end's own Primitive node (not a node that runs): it copies its value
   *  into this node's widget (on every change and when queued), so the widget's text is what the node
   *  gets, known before any run; editing it here would be overwritten, so it is read-only too. */
  primitiveLinked() {
    return upstream(this.node, POINTS_WIDGET)?.node?.type === "PrimitiveNode";
  }

  /** The linked drags are known: a Primitive node's, or those the node got in its last run. */
  linkedKnown() {
    return this.primitiveLinked() || (this.runPoints != null && !!this.runPointsFrom);
  }

  /** Current drags, in the current image's pixels (scaled when placed on another size); `linked`
   *  when they come from the link (read-only). */
  state() {
    const text = this.sourceText();
    if (text !== this.parsedText) {
      this.parsedText = text;
      this.parsed = parsePoints(text);
    }
    const p = this.pointsLinked() ? { ...this.parsed, linked: true } : this.parsed;
    if (p.error) return p;
    const size = this.imageSize();
    if (size && p.width && p.height && (p.width !== size[0] || p.height !== size[1])) {
      return { ...p, scaled: true, drags: scaleDrags(p.drags, p.width, p.height, size[0], size[1]) };
    }
    return p;
  }

  imageSize() {
    return this.image ? [this.image.naturalWidth, this.image.naturalHeight] : null;
  }

  /** Write drags (current image pixels) into the points widget; `undo` pushes the old value. */
  write(drags, { undo = true } = {}) {
    const size = this.imageSize();
    if (!size || !this.pointsWidget) return;
    const before = this.text;
    const after = formatPoints(size[0], size[1], drags);
    if (after === before) return;
    this.notice = "";
    if (undo) {
      this.undoStack.push(before);
      if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    }
    this.recordChange(() => { this.pointsWidget.value = after; });
    this.node.graph?.setDirtyCanvas?.(true, true);
    this.changed();
  }

  /** Run fn as one step of ComfyUI's graph undo (Ctrl+Z): its change tracker checks the graph
   *  state when the outermost after-change arrives. A point drag is one step (begin..end). */
  recordChange(fn) {
    const canvas = app.canvas;
    if (!this.inChange) canvas?.emitBeforeChange?.();
    try { fn(); } finally { if (!this.inChange) canvas?.emitAfterChange?.(); }
  }

  beginChange() {
    if (this.inChange) return;
    this.inChange = true;
    app.canvas?.emitBeforeChange?.();
  }

  endChange() {
    if (!this.inChange) return;
    this.inChange = false;
    app.canvas?.emitAfterChange?.();
  }

  editableDrags() {
    const s = this.state();
    if (s.error || s.linked) return null;
    return s.drags.map((d) => ({ handle: [...d.handle], target: [...d.target] }));
  }

  undo() {
    if (this.pending) { this.pending = null; this.draw(); return; }
    if (this.readOnly()) return;
    if (!this.undoStack.length || !this.pointsWidget) return;
    const value = this.undoStack.pop();
    this.recordChange(() => { this.pointsWidget.value = value; });
    this.selected = -1;
    this.changed();
  }

  clear() {
    this.pending = null;
    this.selected = -1;
    if (this.readOnly()) return;
    if (!this.imageSize()) {
      if (this.pointsWidget && this.text.trim()) {
        this.undoStack.push(this.text);
        this.recordChange(() => { this.pointsWidget.value = formatPoints(null, null, []); });
        this.changed();
      }
      return;
    }
    this.write([]);
  }

  removePair(i) {
    const drags = this.editableDrags();
    if (!drags || i < 0 || i >= drags.length) return;
    drags.splice(i, 1);
    this.selected = -1;
    this.write(drags);
  }

  changed() {
    this.draw();
    this.schedulePreview();
  }

  /** True (and says why in the status line) when the drags come from a link: nothing to edit here. */
  readOnly() {
    if (!this.pointsLinked()) return false;
    this.notice = LINKED_READ_ONLY;
    this.draw();
    return true;
  }

  /** "Copy to widget": the linked drags the node used in the last run become this node's own points
   *  (the link to `points` is removed), editable here. One step of ComfyUI's graph undo. */
  copyLinkedToWidget() {
    const slot = this.node.inputs?.findIndex((i) => i.name === POINTS_WIDGET) ?? -1;
    if (slot < 0 || this.node.inputs[slot].link == null || !this.pointsWidget) return;
    if (!this.linkedKnown()) {
      this.notice = "run the graph once first: the node then sends the drags it got from the link";
      this.draw();
      return;
    }
    const text = this.primitiveLinked() ? this.text : this.runPoints;
    this.recordChange(() => {
      this.node.disconnectInput(slot);
      this.pointsWidget.value = text;
    });
    this.undoStack.length = 0;  // this editor's Undo steps were on the widget's earlier points
    this.notice = "";
    this.node.graph?.setDirtyCanvas?.(true, true);
    this.changed();
  }

  // -------------------------------------------------------------------------------- sources
  /** Called on every node redraw: follow the graph (LoadImage choice, links) cheaply. */
  sync() {
    if (this.dead || !this.node.graph) return;
    const up = upstream(this.node, "image");
    const graphRef = up ? loaderRef(up.node) : null;
    const key = refKey(graphRef);
    if (key !== this.lastGraphKey) {
      this.lastGraphKey = key;
      this.useRun = false;
    }
    const ref = this.useRun && this.runImageRef ? this.runImageRef : graphRef ?? this.runImageRef;
    if (refKey(ref) !== refKey(this.imageRef)) this.loadImage(ref);
    const stale = !!ref && ref === this.runImageRef && this.runUpstreamKey !== upstreamKey(this.node, "image");
    if (stale !== this.stale) { this.stale = stale; this.draw(); }
    const linked = this.pointsLinked();
    if (linked !== this.wasLinked) {  // linked or unlinked since: other drags, other controls
      const first = this.wasLinked === undefined;
      this.wasLinked = linked;
      this.notice = "";
      this.pending = null;
      this.copyButton.style.display = linked ? "" : "none";
      if (!first || linked) this.showPointsRow();
      this.draw();
    }
    const pointsStale = linked && !this.primitiveLinked() && this.runPoints != null && !!this.runPointsFrom &&
      this.runPointsKey !== upstreamKey(this.node, POINTS_WIDGET);
    if (pointsStale !== this.pointsStale) { this.pointsStale = pointsStale; this.draw(); }

    let mask = null;  // nothing connected to `mask`: the whole image is editable
    const m = upstream(this.node, "mask");
    if (m && this.useRun && this.runMaskRef) {
      mask = { ref: this.runMaskRef, channel: "red" };  // what the node got, sent back after a run
    } else if (m) {
      const mref = loaderRef(m.node);
      const channelWidget = m.node.widgets?.find((w) => w.name === "channel");
      if (mref && channelWidget) mask = { ref: mref, channel: String(channelWidget.value) };  // LoadImageMask
      else if (mref && m.slot === 1) mask = { ref: mref, channel: "alpha" };  // LoadImage's MASK
      else if (this.runMaskRef) mask = { ref: this.runMaskRef, channel: "red" };
    }
    const mkey = mask ? `${refKey(mask.ref)}#${mask.channel}` : "";
    if (mkey !== (this.mask?.key ?? "")) this.loadMask(mask, mkey);
    // the points text changed outside the canvas (JSON widget edited, workflow loaded, undo, a run)
    if (this.sourceText() !== this.drawnText) this.changed();
    this.syncTask();
    this.fitVueNode();
  }

  // -------------------------------------------------------------------------------- task (move / copy object)
  /** The preview's task: chosen here, or (auto) that of the FastDragEdit / FastDragMoveObject fed by `drag`. */
  buildTaskSelect(bar) {
    const sel = document.createElement("select");
    sel.className = "fastdrag-task";
    sel.title = "What the preview shows: auto = the task of the FastDrag Edit (or Move / Copy Object) node fed by " +
      "this node; drag = the warp; move / copy object = where the object goes and what gets filled";
    sel.style.cssText = "font:11px sans-serif;border-radius:4px;border:1px solid var(--border-color,#555);" +
      "background:var(--comfy-input-bg,#333);color:inherit";
    for (const t of TASKS) sel.append(new Option(t === "auto" ? "task: auto" : t, t));
    const saved = this.node.properties?.[TASK_PROPERTY];
    sel.value = TASKS.includes(saved) ? saved : "auto";
    sel.addEventListener("change", (e) => {
      e.stopPropagation();
      this.node.properties = { ...(this.node.properties ?? {}), [TASK_PROPERTY]: sel.value };
      this.changed();
    });
    bar.append(sel);
    this.taskSelect = sel;
  }

  /** The task fields of a preview request: {task, overlap, fill_region}. */
  previewTask() {
    const down = downstreamTask(this.node);
    const chosen = this.taskSelect?.value ?? "auto";
    const task = chosen === "auto" ? (down?.task ?? "drag") : chosen;
    if (task === "drag") return { task };
    return { task, overlap: down?.overlap ?? "keep object", fill_region: down?.fill_region ?? null };
  }

  syncTask() {
    const key = JSON.stringify(this.previewTask());
    if (key !== this.taskKey) {
      const first = this.taskKey === undefined;
      this.taskKey = key;
      if (!first) this.changed();
    }
  }

  /** The "Nodes 2.0" (Vue) renderer sizes widget rows by their content, not by the node: there the
   *  canvas is stretched to the node's bottom edge, so it grows and shrinks with the node. */
  fitVueNode() {
    const nodeEl = this.root.closest?.(".lg-node");
    if (!nodeEl) {
      if (this.canvas.style.height) this.canvas.style.height = "";
      return;
    }
    if (this.vueNodeEl !== nodeEl) {
      this.vueNodeEl = nodeEl;
      this.resizeObserver.observe(nodeEl);
    }
    const k = this.canvas.getBoundingClientRect().width / (this.canvas.clientWidth || 1) || 1;
    const avail = (nodeEl.getBoundingClientRect().bottom - this.canvas.getBoundingClientRect().top) / k - 14;
    const want = `${Math.max(180, Math.floor(avail))}px`;
    if (this.canvas.style.height !== want) this.canvas.style.height = want;
  }

  loadImage(ref) {
    this.imageRef = ref;
    this.image = null;
    this.pending = null;
    this.clearPreviewImage();
    if (!ref) { this.draw(); return; }
    const img = new Image();
    img.onload = () => {
      if (this.imageRef !== ref || this.dead) return;
      this.image = img;
      this.message = "";
      this.changed();
    };
    img.onerror = () => {
      if (this.imageRef !== ref || this.dead) return;
      this.message = `could not load ${ref.filename} (${ref.type})`;
      this.draw();
    };
    img.src = imageURL(ref);
    this.draw();
  }

  loadMask(mask, key) {
    this.mask = mask ? { ...mask, key, overlay: null } : null;
    this.schedulePreview();
    if (!mask) { this.draw(); return; }
    const current = this.mask;
    const img = new Image();
    img.onload = () => {
      if (this.mask !== current || this.dead) return;
      current.overlay = maskOverlay(img, mask.channel);
      current.empty = !current.overlay;
      this.draw();
    };
    img.onerror = () => {};  // no overlay; the preview route reports real problems
    img.src = viewURL(mask.ref);
  }

  /** The node's outputs of a run (its `ui`), live or kept by ComfyUI (`restored`). */
  onExecuted(message, { restored = false } = {}) {
    const first = (v) => (Array.isArray(v) && v.length && v[0]?.filename ? v[0] : null);
    const img = first(message?.fastdrag_image) ?? first(message?.images);
    if (!img) return;
    this.runImageRef = { filename: img.filename, subfolder: img.subfolder ?? "", type: img.type ?? "temp" };
    const mask = first(message?.fastdrag_mask);
    this.runMaskRef = mask ? { filename: mask.filename, subfolder: mask.subfolder ?? "", type: mask.type ?? "temp" } : null;
    this.runUpstreamKey = upstreamKey(this.node, "image");
    const points = message?.fastdrag_points?.[0];
    this.runPoints = typeof points === "string" ? points : null;
    const from = message?.fastdrag_points_from?.[0];
    this.runPointsFrom = Array.isArray(from) ? from.map(String) : null;
    if (restored && this.runPointsFrom) {  // only if `points` is still fed by that node's output
      const up = upstream(this.node, POINTS_WIDGET);
      if (!up || String(up.node.id) !== this.runPointsFrom[0] || String(up.slot) !== this.runPointsFrom[1]) {
        this.runPointsFrom = null;
      }
    }
    this.runPointsKey = upstreamKey(this.node, POINTS_WIDGET);
    const error = message?.fastdrag_error?.[0];
    this.runError = typeof error === "string" ? error : null;
    const notice = message?.fastdrag_notice?.[0];  // the run stopped here on purpose (no drags yet)
    this.runNotice = typeof notice === "string" ? notice : null;
    this.runNoticeText = this.runNotice ? this.text : null;  // shown until the drags change
    const warning = message?.fastdrag_warning?.[0];  // e.g. a handle outside the mask the node got
    this.runWarning = typeof warning === "string" ? warning : null;
    this.runWarningText = this.sourceText();
    this.useRun = true;
    this.sync();
    this.draw();
  }

  /** ComfyUI keeps a node's last outputs (app.nodeOutputs) across graph undo, which re-creates the
   *  node and its editor: show that run's picture and drags again, as ComfyUI's own previews do.
   *  (Whether the nodes feeding `image` and `points` changed since is judged from then on.) */
  restoreRunOutputs() {
    if (this.dead || this.runImageRef) return;
    const out = app.nodeOutputs?.[String(this.node.id)];
    if (out?.fastdrag_image) this.onExecuted(out, { restored: true });
  }

  /** FastDragPoints stopped (no drags yet, or it refused its input): it sent its picture first. */
  onPictureEvent(detail) {
    if (!detail || this.dead || String(detail.node) !== String(this.node.id)) return;
    this.onExecuted(detail);
  }

  // -------------------------------------------------------------------------------- preview
  setPreview(on) {
    this.preview.on = !!on;
    if (this.previewToggle.checked !== this.preview.on) this.previewToggle.checked = this.preview.on;
    if (on) this.requestPreview(); else this.draw();
  }

  clearPreviewImage() {
    const p = this.preview;
    if (p.url) URL.revokeObjectURL(p.url);
    p.url = null;
    p.img = null;
  }

  schedulePreview() {
    const p = this.preview;
    if (!p.on) return;
    clearTimeout(p.timer);
    p.timer = setTimeout(() => this.requestPreview(), PREVIEW_DEBOUNCE_MS);
  }

  async requestPreview() {
    const p = this.preview;
    if (!p.on || this.dead) return;
    if (p.inFlight) { p.again = true; return; }
    const s = this.state();
    // over the cap the route refuses the drags as the node does: the status line says so already
    if (!this.imageRef || !this.image || s.error || !s.drags.length || s.drags.length > MAX_DRAGS) {
      this.clearPreviewImage();
      p.error = null;
      this.draw();
      return;
    }
    const body = {
      image: this.imageRef,
      mask: this.mask ? { ...this.mask.ref, channel: this.mask.channel } : null,
      points: this.sourceText(),
      holes: true,
      ...this.previewTask(),
    };
    const seq = ++p.seq;
    p.inFlight = true;
    const t0 = performance.now();
    try {
      const res = await api.fetchApi("/fastdrag/preview", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (!res.ok) {
        let msg = `HTTP ${res.status}`;
        try { msg = (await res.json()).error ?? msg; } catch { /* not JSON */ }
        p.error = msg;
        this.clearPreviewImage();
      } else {
        const blob = await res.blob();
        const url = URL.createObjectURL(blob);
        const img = new Image();
        await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = url; });
        if (seq === p.seq && p.on && !this.dead) {
          this.clearPreviewImage();
          p.img = img;
          p.url = url;
          p.error = null;
          p.ms = performance.now() - t0;
          p.serverMs = Number(res.headers.get("X-FastDrag-Ms"));
          p.holes = Number(res.headers.get("X-FastDrag-Holes"));
          p.grid = res.headers.get("X-FastDrag-Grid");
          p.task = body.task;
          p.shift = res.headers.get("X-FastDrag-Shift");
          p.count += 1;
        } else {
          URL.revokeObjectURL(url);
        }
      }
    } catch (e) {
      p.error = `preview request failed: ${e?.message ?? e}`;
    } finally {
      p.inFlight = false;
    }
    this.draw();
    if (p.again) { p.again = false; this.requestPreview(); }
  }

  // -------------------------------------------------------------------------------- geometry
  layout() {
    const cw = this.canvas.clientWidth, ch = this.canvas.clientHeight;
    const size = this.imageSize();
    if (!size || cw < 2 || ch < 2) return null;
    return fitLayout(cw, ch, size[0], size[1]);
  }

  toCanvas(p, L) { return imageToCanvas(p, L); }

  /** Image pixel (integer, clamped) under a pointer event; null off the image. */
  eventToImage(e, L, { clampToImage = false } = {}) {
    const r = this.canvas.getBoundingClientRect();
    // getBoundingClientRect includes the canvas-wide CSS transform (graph zoom); clientWidth doesn't.
    const k = r.width / (this.canvas.clientWidth || 1);
    const cx = (e.clientX - r.left) / k, cy = (e.clientY - r.top) / k;
    return canvasToImage([cx, cy], L, { clampToImage });
  }

  /** For tests and tools: client (viewport) coordinates of an image pixel. */
  imageToClient(x, y) {
    const L = this.layout();
    if (!L) return null;
    const r = this.canvas.getBoundingClientRect();
    const k = r.width / (this.canvas.clientWidth || 1);
    const [cx, cy] = this.toCanvas([x, y], L);
    return { x: r.left + cx * k, y: r.top + cy * k };
  }

  hit(e, L) {
    const s = this.state();
    if (s.error) return null;
    const r = this.canvas.getBoundingClientRect();
    const k = r.width / (this.canvas.clientWidth || 1);
    const cx = (e.clientX - r.left) / k, cy = (e.clientY - r.top) / k;
    let best = null, bestD = HIT_RADIUS;
    s.drags.forEach((d, index) => {
      for (const end of ["target", "handle"]) {  // targets drawn on top: prefer them
        const [px, py] = this.toCanvas(d[end], L);
        const dist = Math.hypot(px - cx, py - cy);
        if (dist < bestD) { bestD = dist; best = { index, end }; }
      }
    });
    return best;
  }

  // -------------------------------------------------------------------------------- input
  onPointerDown(e) {
    e.stopPropagation();
    this.root.focus({ preventScroll: true });
    if (e.button !== 0) return;
    // no preventDefault: the mouseup that follows must reach ComfyUI's change tracker (graph undo)
    const L = this.layout();
    if (!L) return;
    if (this.readOnly()) return;
    const h = this.hit(e, L);
    if (h) {
      const drags = this.editableDrags();
      this.undoStack.push(this.text);
      this.dragging = { ...h, drags, moved: false };
      this.beginChange();
      this.selected = h.index;
      this.canvas.setPointerCapture?.(e.pointerId);
      this.draw();
      return;
    }
    const p = this.eventToImage(e, L);
    if (!p) return;
    if (this.state().error) { this.message = "fix or clear the points JSON first"; this.draw(); return; }
    if (this.pending) {  // second click: the target of the waiting handle
      this.placeDrag(this.pending, p);
      return;
    }
    // press: a drag from here if the pointer moves while held, else a click (the handle)
    this.pressed = { start: p, client: [e.clientX, e.clientY], moved: false };
    this.hover = p;
    this.canvas.setPointerCapture?.(e.pointerId);
    this.draw();
  }

  placeDrag(handle, target) {
    const drags = this.editableDrags();
    if (!drags) { this.message = "fix or clear the points JSON first"; this.draw(); return; }
    drags.push({ handle: [...handle], target: [...target] });
    this.pending = null;
    this.pressed = null;
    this.selected = drags.length - 1;
    this.write(drags);
  }

  onPointerMove(e) {
    const L = this.layout();
    if (!L) return;
    if (this.pressed) {  // rubber band from the pressed handle to the pointer
      e.stopPropagation();
      const pr = this.pressed;
      if (Math.hypot(e.clientX - pr.client[0], e.clientY - pr.client[1]) > DRAG_THRESHOLD) pr.moved = true;
      this.hover = this.eventToImage(e, L, { clampToImage: true });
      this.draw();
      return;
    }
    if (!this.dragging) {
      this.canvas.style.cursor = this.hit(e, L) ? "move" : "crosshair";
      if (this.pending) {  // rubber band from a clicked handle to the pointer
        this.hover = this.eventToImage(e, L, { clampToImage: true });
        this.draw();
      }
      return;
    }
    e.stopPropagation();
    const p = this.eventToImage(e, L, { clampToImage: true });
    const d = this.dragging;
    d.drags[d.index][d.end] = p;
    d.moved = true;
    this.write(d.drags, { undo: false });
  }

  onPointerUp(e) {
    const pr = this.pressed;
    if (pr) {
      e.stopPropagation();
      this.pressed = null;
      this.canvas.releasePointerCapture?.(e.pointerId);
      const L = this.layout();
      const end = L ? this.eventToImage(e, L, { clampToImage: true }) : null;
      if (pr.moved && end && e.type === "pointerup") this.placeDrag(pr.start, end);  // press-and-drag
      else if (!pr.moved && e.type === "pointerup") { this.pending = pr.start; this.draw(); }  // a click
      else this.draw();
      return;
    }
    const d = this.dragging;
    if (!d) return;
    e.stopPropagation();
    this.dragging = null;
    this.endChange();
    this.canvas.releasePointerCapture?.(e.pointerId);
    if (!d.moved) this.undoStack.pop();  // a click on a point only selects it
    this.draw();
  }

  onContextMenu(e) {
    e.preventDefault();
    e.stopPropagation();
    const L = this.layout();
    if (!L) return;
    const h = this.hit(e, L);
    if (h && !this.readOnly()) this.removePair(h.index);
    else if (this.pending) { this.pending = null; this.draw(); }
  }

  onKeyDown(e) {
    const key = e.key;
    if (key === "Delete" || key === "Backspace") {
      const s = this.state();
      if (this.pending) { this.pending = null; this.draw(); }
      else if (!s.error && s.drags.length && !this.readOnly()) this.removePair(this.selected >= 0 ? this.selected : s.drags.length - 1);
    } else if (key === "Escape") {
      this.pending = null;
      this.pressed = null;
      this.selected = -1;
      this.draw();
    } else {
      return;
    }
    e.preventDefault();
    e.stopPropagation();  // keep ComfyUI's Delete / Backspace (remove the node) out of it
  }

  // -------------------------------------------------------------------------------- drawing
  draw() {
    if (this.dead) return;
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cw = c.clientWidth, ch = c.clientHeight;
    if (c.width !== Math.round(cw * dpr) || c.height !== Math.round(ch * dpr)) {
      c.width = Math.round(cw * dpr);
      c.height = Math.round(ch * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    const s = this.state();
    const L = this.layout();
    const p = this.preview;
    this.drawnText = this.sourceText();
    if (!L) {
      ctx.fillStyle = "#999";
      ctx.font = "12px sans-serif";
      ctx.textAlign = "center";
      const msg = this.message || (this.imageRef ? "loading image…" :
        "Connect a Load Image to 'image', or run the graph once (the node then sends its picture here), to place drags");
      ctx.fillText(msg, cw / 2, ch / 2, cw - 10);
      this.setStatus(s.error ?? [this.rescaledNotMask(), s.linked ? "points come from a link: run the graph once; the " +
                                 "node then sends its picture and the drags it gets, shown here read-only" : ""]
        .filter(Boolean).join(" · "));
      return;
    }
    const showPreview = p.on && p.img && !s.error && s.drags.length && s.drags.length <= MAX_DRAGS;
    ctx.imageSmoothingEnabled = !showPreview;  // preview cells stay visible as cells
    ctx.drawImage(showPreview ? p.img : this.image, L.ox, L.oy, L.W * L.s, L.H * L.s);
    ctx.imageSmoothingEnabled = true;
    const overlay = this.mask?.overlay;
    if (!showPreview && overlay && overlay.width === L.W && overlay.height === L.H) {
      ctx.globalAlpha = 0.5;
      ctx.drawImage(overlay, L.ox, L.oy, L.W * L.s, L.H * L.s);
      ctx.globalAlpha = 1;
    }
    if (!s.error) {
      s.drags.forEach((d, i) => this.drawArrow(ctx, this.toCanvas(d.handle, L), this.toCanvas(d.target, L), i + 1,
                                               i === this.selected && !s.linked, s.linked, i >= MAX_DRAGS));
    }
    if (s.linked) this.drawBadge(ctx, L, this.pointsStale ? "FROM LINK · STALE" : "FROM LINK · read-only");
    const start = this.pressed?.start ?? this.pending;
    if (start) {
      const [x, y] = this.toCanvas(start, L);
      if (this.hover && (this.pending || this.pressed.moved)) {  // the rubber band
        const [tx, ty] = this.toCanvas(this.hover, L);
        ctx.setLineDash([5, 4]);
        for (const [color, width] of [["rgba(0,0,0,.7)", 4], ["#fff", 2]]) {
          ctx.strokeStyle = color;
          ctx.lineWidth = width;
          ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(tx, ty); ctx.stroke();
        }
        ctx.setLineDash([]);
        dot(ctx, tx, ty, 4, TARGET_COLOR);
      }
      dot(ctx, x, y, 5, HANDLE_COLOR);
      ctx.setLineDash([3, 3]);
      ctx.strokeStyle = HANDLE_COLOR;
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.arc(x, y, 10, 0, 2 * Math.PI); ctx.stroke();
      ctx.setLineDash([]);
    }
    if (this.stale) {  // the picture is from an earlier run and the graph above changed since
      ctx.setLineDash([8, 5]);
      ctx.strokeStyle = "#f0b400";
      ctx.lineWidth = 3;
      ctx.strokeRect(L.ox + 1.5, L.oy + 1.5, L.W * L.s - 3, L.H * L.s - 3);
      ctx.setLineDash([]);
    }
    this.setStatus(this.statusText(s, L));
  }

  /** A numbered arrow from handle to target; `linked` (drags from the link, read-only): dashed shaft. */
  drawArrow(ctx, [hx, hy], [tx, ty], n, selected, linked = false, over = false) {
    const ang = Math.atan2(ty - hy, tx - hx);
    const len = Math.hypot(tx - hx, ty - hy);
    ctx.lineCap = "round";
    for (const [color, width] of [["rgba(0,0,0,.6)", 5], [over ? OVER_LIMIT_COLOR : "#fff", 2.5]]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.setLineDash(linked || over ? [7, 5] : []);
      ctx.beginPath();
      ctx.moveTo(hx, hy);
      ctx.lineTo(tx, ty);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      if (len > 8) {
        ctx.moveTo(tx, ty);
        ctx.lineTo(tx - 11 * Math.cos(ang - 0.45), ty - 11 * Math.sin(ang - 0.45));
        ctx.moveTo(tx, ty);
        ctx.lineTo(tx - 11 * Math.cos(ang + 0.45), ty - 11 * Math.sin(ang + 0.45));
      }
      ctx.stroke();
    }
    dot(ctx, hx, hy, selected ? 6.5 : 5, over ? OVER_LIMIT_COLOR : HANDLE_COLOR);
    dot(ctx, tx, ty, selected ? 6.5 : 5, over ? OVER_LIMIT_COLOR : TARGET_COLOR);
    ctx.font = "bold 12px sans-serif";
    ctx.textAlign = "left";
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,.8)";
    ctx.strokeText(String(n), hx + 7, hy - 7);
    ctx.fillStyle = "#fff";
    ctx.fillText(String(n), hx + 7, hy - 7);
  }

  /** A label in the picture's top-left corner (white on dark), e.g. where the drags come from. */
  drawBadge(ctx, L, text) {
    ctx.font = "bold 11px sans-serif";
    ctx.textAlign = "left";
    const w = ctx.measureText(text).width + 10;
    ctx.fillStyle = "rgba(20,20,20,.8)";
    ctx.fillRect(L.ox + 4, L.oy + 4, w, 17);
    ctx.fillStyle = "#ffd36b";
    ctx.fillText(text, L.ox + 9, L.oy + 16);
  }

  statusText(s, L) {
    if (s.error) return s.error + (s.linked ? " (in the points the node got from the link)" : " (Clear to start over)");
    if (this.message) return this.message;
    const n = s.drags.length;
    const parts = [];
    if (this.notice) parts.push(this.notice);
    if (this.runNotice && this.runNoticeText === this.text && !n) parts.push(this.runNotice);
    for (const w of this.warnings(s, L)) parts.push(w);
    parts.push(`${L.W}×${L.H}`);
    if (!s.linked) {
      parts.push(`${n} drag${n === 1 ? "" : "s"}`);
    } else if (!this.linkedKnown()) {
      parts.push(this.runError ? `points come from a link; the node refused them in the last run: ${this.runError}`
        : "points come from a link: run the graph once and the drags the node gets are shown here (read-only)");
    } else if (this.primitiveLinked()) {
      parts.push(`${n} drag${n === 1 ? "" : "s"} from a Primitive node (read-only here: edit them there, or ` +
                 "'Copy to widget' to edit them here)");
    } else {
      parts.push(`${n} drag${n === 1 ? "" : "s"} from the link (read-only: what the node used in the last run; ` +
                 "'Copy to widget' to edit them here)");
      if (this.pointsStale) parts.push("STALE drags: the nodes feeding 'points' changed since the run; run the graph again to see the new drags");
    }
    if (this.stale) parts.push("STALE picture: it is from the last run and the nodes feeding 'image' changed since; " +
                               "run the graph again to see the new picture");
    if (s.scaled) parts.push("points rescaled from " + `${this.parsed.width}×${this.parsed.height}`);
    if (this.mask?.empty) parts.push("the connected mask is empty: the node refuses it; paint it (mask editor) or disconnect it");
    else if (!this.maskConnected()) parts.push(NO_MASK_HINT);
    const p = this.preview;
    if (p.on) {
      if (n > MAX_DRAGS) parts.push(`preview: off over ${MAX_DRAGS} drags`);
      else if (p.error) parts.push(`preview: ${p.error}`);
      else if (p.img && s.drags.length && p.task && p.task !== "drag") {
        parts.push(`preview (${p.task}) ${Math.round(p.ms)} ms, object moved by (${p.shift}) cells (dx,dy), ${p.holes} cells filled`);
      } else if (p.img && s.drags.length) parts.push(`preview ${Math.round(p.ms)} ms, ${p.holes} hole cells`);
      else if (!s.drags.length) parts.push("preview: no drags yet");
    }
    if (s.linked) { /* nothing to place */ }
    else if (this.pending) parts.push("click the target");
    else if (!s.drags.length) parts.push("press on the handle and drag to the target (or click handle, then target)");
    return parts.join(" · ");
  }

  /** What will go wrong, said before the run: drags past the node's cap, handles outside the mask,
   *  a mask that does not follow a rescaled picture. */
  warnings(s, L) {
    const out = [];
    this.handlesOutside = [];
    const n = s.drags.length;
    if (n > MAX_DRAGS) {
      out.push(`${n} drags: the node takes at most ${MAX_DRAGS}; ${n === MAX_DRAGS + 1 ? "drag " + n + " (grey) is" :
        "drags " + (MAX_DRAGS + 1) + "-" + n + " (grey) are"} over the limit: remove ${n - MAX_DRAGS === 1 ? "it" : "them"} ` +
        "(right-click a point, Delete, or Undo)");
    }
    const bits = this.mask?.overlay?.editable;
    if (bits && this.mask.overlay.width === L.W && this.mask.overlay.height === L.H) {
      const outside = [];
      s.drags.forEach((d, i) => {
        const x = Math.min(L.W - 1, Math.max(0, Math.round(d.handle[0])));
        const y = Math.min(L.H - 1, Math.max(0, Math.round(d.handle[1])));
        if (!bits[y * L.W + x]) outside.push(i + 1);
      });
      if (outside.length) {
        this.handlesOutside = outside;
        out.push(`WARNING: handle of drag ${outside.join(", ")} is outside the mask: only the masked region moves, so the ` +
                 "edit moves that region instead of what is under the handle; put the handle inside, or paint the mask over it");
      }
    } else if (this.mask?.overlay && this.image) {
      out.push(`WARNING: the mask is ${this.mask.overlay.width}×${this.mask.overlay.height} but the picture is ` +
               `${L.W}×${L.H}: the node refuses a mask of another size; scale the mask the same way as the picture`);
    }
    if (this.runWarning && this.runWarningText === this.sourceText() && !out.some((w) => w.includes("outside the mask"))) {
      out.push(this.runWarning);  // the node's own check (a mask the editor cannot read, linked drags)
    }
    const rescaled = this.rescaledNotMask();
    if (rescaled && !(this.mask?.overlay && this.mask.overlay.width !== L.W)) out.push(rescaled);
    return out;
  }

  /** `image` passes through a node (Image Scale, ...) while `mask` comes straight from a file: the points
   *  follow the picture's new size, a full-size mask does not. Said before the run (the picture's size
   *  is known only after it). */
  rescaledNotMask() {
    const img = upstream(this.node, "image"), m = upstream(this.node, "mask");
    if (!img || !m || loaderRef(img.node) || !loaderRef(m.node)) return "";
    const through = img.node.title || img.node.type;
    const from = m.node.title || m.node.type;
    return `WARNING: 'image' comes through ${through}, 'mask' straight from ${from}: the points follow the picture's ` +
      "size, the mask does not; if the picture is resized, resize the mask the same way (Convert Mask to Image, " +
      "the same scaling, Convert Image to Mask), or the node refuses it";
  }

  setStatus(text) {
    if (this.status.textContent !== text) {
      this.status.textContent = text;
      this.status.title = text;
    }
    const hint = this.image && !this.maskConnected() ? NO_MASK_HINT : "";
    if (this.canvas.title !== hint) this.canvas.title = hint;  // the tooltip on the picture
  }

  maskConnected() {
    return !!upstream(this.node, "mask");
  }

  destroy() {
    this.endChange();
    this.dead = true;
    clearInterval(this.syncTimer);
    api.removeEventListener(PICTURE_EVENT, this.onPicture);
    this.resizeObserver?.disconnect();
    clearTimeout(this.preview.timer);
    this.clearPreviewImage();
  }
}

/** A filled dot with a white ring inside a black one: visible on light and dark pictures alike. */
function dot(ctx, x, y, r, color) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = color;
  ctx.fill();
  ctx.lineWidth = 4;
  ctx.strokeStyle = "rgba(0,0,0,.85)";
  ctx.stroke();
  ctx.lineWidth = 1.75;
  ctx.strokeStyle = "#fff";
  ctx.stroke();
}

/** A canvas (image size), opaque outside the editable region (drawn translucent: the region that
 *  stays as it is looks dimmed); null for an empty mask (= whole image editable). */
function maskOverlay(img, channel) {
  const w = img.naturalWidth, h = img.naturalHeight;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, w, h);
  const px = data.data;
  const ch = { red: 0, green: 1, blue: 2, alpha: 3 }[channel] ?? 3;
  let any = false;
  const editable = new Uint8Array(w * h);  // 1 = editable, per image pixel (the node's mask > 0)
  for (let i = 0; i < px.length; i += 4) {
    const v = ch === 3 ? 255 - px[i + 3] : px[i + ch];
    const on = v > 0;
    any ||= on;
    editable[i >> 2] = on ? 1 : 0;
    px[i] = 0; px[i + 1] = 0; px[i + 2] = 0; px[i + 3] = on ? 0 : 255;
  }
  if (!any) return null;
  ctx.putImageData(data, 0, 0);
  c.editable = editable;
  return c;
}

// ---------------------------------------------------------------------------------------------

// Register once even if this file is served twice (ComfyUI does so when a pack has both
// WEB_DIRECTORY and a [tool.comfy] web entry under another folder name, e.g. an older copy).
const LOADED = Symbol.for("fastdrag.points_editor.loaded");
if (!window[LOADED]) {
  window[LOADED] = true;
  app.registerExtension(extension());
}

function extension() { return {
  name: "fastdrag.points_editor",
  // ComfyUI puts a workflow's kept outputs back when its tab is opened again (after the graph)
  onNodeOutputsUpdated() {
    for (const node of app.graph?.nodes ?? []) node.fastdragEditor?.restoreRunOutputs();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_CLASS) return;
    const proto = nodeType.prototype;
    const chain = (name, fn) => {
      const prev = proto[name];
      proto[name] = function (...args) {
        const r = prev?.apply(this, args);
        fn.apply(this, args);
        return r;
      };
    };
    chain("onNodeCreated", function () {
      const editor = new DragEditor(this);
      this.fastdragEditor = editor;
      if (editor.pointsWidget) editor.setJsonShown(false);  // edited through the canvas
      const [w, h] = this.size;
      this.setSize([Math.max(w, 360), Math.max(h, 400)]);
    });
    chain("onExecuted", function (message) {
      this.fastdragEditor?.onExecuted(message);
    });
    chain("onConfigure", function () {
      // a loaded workflow: widget values are restored; redraw from them
      const ed = this.fastdragEditor;
      if (ed) { ed.undoStack.length = 0; ed.pending = null; ed.changed(); }
    });
    chain("onAfterGraphConfigured", function () {
      // graph undo re-creates the node: its last run's outputs are still known to ComfyUI
      this.fastdragEditor?.restoreRunOutputs();
    });
    chain("onDrawForeground", function () {
      this.fastdragEditor?.sync();
    });
    chain("onConnectionsChange", function () {
      this.fastdragEditor?.sync();
    });
    chain("onResize", function () {
      this.fastdragEditor?.draw();
    });
    chain("onRemoved", function () {
      this.fastdragEditor?.destroy();
      this.fastdragEditor = null;
    });
  },
}; }
