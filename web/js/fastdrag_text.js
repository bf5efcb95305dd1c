// Shows what each stage did on the node that ran it: FastDragInvert ("inverted to t=... K/V ..."),
// FastDragSample ("sampled ... N hits ..."), DragDiffusionLoRA (rank, steps, loss), DragDiffusionDrag
// (iterations, handles, time per iteration), DragDiffusionSample (controlled attention calls).
// FastDragEdit and DragDiffusionEdit expand into stage nodes: ComfyUI delivers the stages' outputs to
// the Edit node (the "display node" of its expanded sub-nodes), so it shows one line per stage of its
// own run, in pipeline order, instead of them staying on hidden sub-node ids.

import { stageOf, stageRank } from "./fastdrag_stages.js";

const { app } = window.comfyAPI.app;

const NODES = ["FastDragEdit", "FastDragInvert", "FastDragSample",
  "DragDiffusionEdit", "DragDiffusionLoRA", "DragDiffusionDrag", "DragDiffusionSample"];
const WIDGET = "fastdrag_summary";
// Per-widget serial in the name: the "Nodes 2.0" renderer mounts a DOM widget's element only when its
// row (keyed by index and name) is mounted, and graph undo re-creates the node under the same id; a
// new name gives the new node's summary a new row (see fastdrag_points.js).
let widgetSerial = 0;
const MIN_HEIGHT = 34;  // two lines

/** Height of the element's text as laid out now (its content box grows with the widget's box, so
 *  the text's own extent is measured, not scrollHeight). */
function textHeight(el) {
  if (!el.isConnected || !el.firstChild) return 0;
  const range = document.createRange();
  range.selectNodeContents(el);
  const k = el.getBoundingClientRect().height / (el.offsetHeight || 1) || 1;  // the canvas zoom
  const pad = parseFloat(getComputedStyle(el).paddingTop) + parseFloat(getComputedStyle(el).paddingBottom);
  return range.getBoundingClientRect().height / k + pad;
}

/** Grow the node (never shrink it) so that its summary is shown whole; in the "Nodes 2.0" renderer
 *  the node's box follows its content already. */
function fit(node) {
  requestAnimationFrame(() => {
    const want = node.computeSize?.()[1];
    if (want && want > node.size[1]) node.setSize([node.size[0], want]);
    node.setDirtyCanvas?.(true, true);
  });
}

function summaryWidget(node) {
  const el = document.createElement("div");
  el.className = "fastdrag-summary";
  el.style.cssText = "font:11px monospace;white-space:pre-wrap;overflow-wrap:anywhere;opacity:.85;" +
    "padding:2px 4px;color:var(--input-text,#ddd);user-select:text;min-height:14px";
  el.textContent = "";
  const widget = node.addDOMWidget(`${WIDGET}_${++widgetSerial}`, "FASTDRAG_SUMMARY", el, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    // the whole text, at the node's width: the node grows to show it (see fit) instead of the text
    // running over the node below
    getMinHeight: () => Math.max(MIN_HEIGHT, Math.ceil(textHeight(el)) + 6),
  });
  widget.serialize = false;
  return { el, widget, lines: new Map() };
}

/** One line per stage, in pipeline order (LoRA, inversion, drag, sampling). */
function render(summary) {
  const keys = [...summary.lines.keys()].sort((a, b) => stageRank(a) - stageRank(b));
  summary.el.textContent = keys.map((k) => summary.lines.get(k)).join("\n");
}

const LOADED = Symbol.for("fastdrag.text.loaded");
if (!window[LOADED]) {
  window[LOADED] = true;
  app.registerExtension({
    name: "fastdrag.text",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!NODES.includes(nodeData?.name)) return;
      const proto = nodeType.prototype;
      const created = proto.onNodeCreated;
      proto.onNodeCreated = function (...args) {
        const r = created?.apply(this, args);
        this.fastdragSummary = summaryWidget(this);
        return r;
      };
      const started = proto.onExecutionStart;
      proto.onExecutionStart = function (...args) {  // a new run: forget the last one's lines
        const r = started?.apply(this, args);
        if (this.fastdragSummary) { this.fastdragSummary.lines.clear(); render(this.fastdragSummary); }
        return r;
      };
      const executed = proto.onExecuted;
      proto.onExecuted = function (message) {
        const r = executed?.apply(this, arguments);
        const texts = message?.text;
        const s = this.fastdragSummary;
        if (s && Array.isArray(texts) && texts.length) {
          for (const t of texts) s.lines.set(stageOf(String(t)), String(t));
          render(s);
          fit(this);
        }
        return r;
      };
    },
  });
}
