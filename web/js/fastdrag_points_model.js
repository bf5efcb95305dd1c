// Pure parts of the FastDrag points editor (no DOM, no ComfyUI): the points JSON and the mapping
// between image pixels and the canvas. Imported by fastdrag_points.js; unit-tested under node
// (tests/js/). ComfyUI loads every .js in web/ as an extension: this one only exports.

// ---------------------------------------------------------------------------------------------
// points JSON

/** Parse the widget value. Returns {width, height, drags:[{handle,target}]} or {error}. */
export function parsePoints(text) {
  if (text == null || String(text).trim() === "") return { width: null, height: null, drags: [] };
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { error: `points JSON is not valid: ${e.message}` };
  }
  const pt = (p) => Array.isArray(p) && p.length === 2 && p.every((c) => typeof c === "number" && isFinite(c));
  if (Array.isArray(v)) {  // DragBench flat list: handle, target, handle, target, ...
    if (v.length % 2 || !v.every(pt)) return { error: "points list must be [[x, y], ...] handle, target pairs" };
    if (v.length > 2 * MAX_SHOWN_DRAGS) return { error: `${v.length / 2} drags, at most ${MAX_DRAGS} are accepted` };
    const drags = [];
    for (let i = 0; i < v.length; i += 2) drags.push({ handle: [...v[i]], target: [...v[i + 1]] });
    return { width: null, height: null, drags };
  }
  if (!v || typeof v !== "object" || !Array.isArray(v.drags)) return { error: "points JSON needs a \"drags\" list" };
  if (v.version !== undefined && v.version !== 1) return { error: `points JSON version ${v.version} is not 1` };
  if (!v.drags.every((d) => d && pt(d.handle) && pt(d.target))) return { error: "each drag needs handle [x, y] and target [x, y]" };
  if (v.drags.length > MAX_SHOWN_DRAGS) return { error: `${v.drags.length} drags, at most ${MAX_DRAGS} are accepted` };
  // the node's rules (fastdrag_core.points): whole positive pixel counts, both or neither
  const dim = (n) => (n == null ? null : Number.isInteger(n) && n > 0 && n <= 1 << 20 ? n : NaN);
  const width = dim(v.width), height = dim(v.height);
  if (Number.isNaN(width) || Number.isNaN(height)) return { error: "points JSON: width and height must be positive whole numbers of pixels" };
  if ((width === null) !== (height === null)) return { error: "points JSON: give both width and height, or neither" };
  return { width, height, drags: v.drags.map((d) => ({ handle: [...d.handle], target: [...d.target] })) };
}

/** The node's cap on drags per edit (fastdrag_core.points.MAX_DRAGS). */
export const MAX_DRAGS = 32;
/** Drags over MAX_DRAGS are still parsed and drawn (marked, removable) up to this many: one too many
 *  must not leave "Clear" as the only way out; a list longer than this is a pasted mistake. */
export const MAX_SHOWN_DRAGS = 256;

export function formatPoints(width, height, drags) {
  return JSON.stringify({
    version: 1, width, height,
    drags: drags.map((d) => ({ handle: d.handle.map(round2), target: d.target.map(round2) })),
  });
}

export const round2 = (v) => Math.round(v * 100) / 100;
export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/** "sub/name.png [input]" -> {filename, subfolder, type} (LoadImage's annotated names). */
export function parseAnnotated(value) {
  const m = /^(.*?)\s*\[(input|output|temp)\]$/.exec(value);
  const name = m ? m[1] : value;
  const type = m ? m[2] : "input";
  const i = name.lastIndexOf("/");
  return { filename: name.slice(i + 1), subfolder: i >= 0 ? name.slice(0, i) : "", type };
}

/** Fit a W x H image into a cw x ch canvas (contain, centred): scale s and offsets in css px. */
export function fitLayout(cw, ch, W, H) {
  const s = Math.min(cw / W, ch / H);
  return { W, H, s, ox: (cw - W * s) / 2, oy: (ch - H * s) / 2, cw, ch };
}

/** Image pixel (x, y) -> canvas css px. Pixel (x, y) is drawn at the continuous position x, y. */
export function imageToCanvas([x, y], L) {
  return [L.ox + x * L.s, L.oy + y * L.s];
}

/** Canvas css px -> integer image pixel; null off the image unless clampToImage. */
export function canvasToImage([cx, cy], L, { clampToImage = false } = {}) {
  const x = (cx - L.ox) / L.s, y = (cy - L.oy) / L.s;
  const inside = x >= -0.5 && y >= -0.5 && x <= L.W - 0.5 && y <= L.H - 0.5;
  if (!inside && !clampToImage) return null;
  return [clamp(Math.round(x), 0, L.W - 1), clamp(Math.round(y), 0, L.H - 1)];
}

/** Drags placed on a w0 x h0 image, on a w1 x h1 image (the node's scaled_to rule). */
export function scaleDrags(drags, w0, h0, w1, h1) {
  const sx = w1 / w0, sy = h1 / h0;
  const s = ([x, y]) => [x * sx, y * sy];
  return drags.map((d) => ({ handle: s(d.handle), target: s(d.target) }));
}
