// Unit tests of the editor's pure parts (web/js/fastdrag_points_model.js): node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  canvasToImage, fitLayout, formatPoints, imageToCanvas, parseAnnotated, parsePoints, scaleDrags,
} from "../../web/js/fastdrag_points_model.js";

test("parsePoints reads the v1 format, DragBench's flat list and empty values", () => {
  const v1 = parsePoints('{"version": 1, "width": 320, "height": 224, "drags": [{"handle": [1, 2], "target": [3, 4.5]}]}');
  assert.deepEqual(v1, { width: 320, height: 224, drags: [{ handle: [1, 2], target: [3, 4.5] }] });
  assert.deepEqual(parsePoints("[[1, 2], [3, 4], [5, 6], [7, 8]]").drags,
    [{ handle: [1, 2], target: [3, 4] }, { handle: [5, 6], target: [7, 8] }]);
  assert.deepEqual(parsePoints(""), { width: null, height: null, drags: [] });
  assert.deepEqual(parsePoints('{"version": 1, "drags": []}'), { width: null, height: null, drags: [] });
});

test("parsePoints reports malformed values instead of throwing", () => {
  for (const bad of ["{nope", "[[1, 2]]", "[[1, 2], [3]]", '{"drags": [{"handle": [1, 2]}]}', "42",
                     '{"version": 2, "drags": []}', '{"drags": [{"handle": [1, "a"], "target": [1, 2]}]}']) {
    assert.ok(parsePoints(bad).error, bad);
  }
});

test("parsePoints refuses what the node refuses: one size alone, invalid sizes, over 256 drags", () => {
  const d = '"drags": [{"handle": [1, 2], "target": [3, 4]}]';
  assert.match(parsePoints(`{"width": 320, ${d}}`).error, /both width and height/);
  assert.match(parsePoints(`{"height": 20, ${d}}`).error, /both width and height/);
  for (const bad of ["0", "-5", "12.5", '"320"', "true"]) {
    assert.match(parsePoints(`{"width": ${bad}, "height": 20, ${d}}`).error, /positive whole numbers/, bad);
  }
  const drag = { handle: [1, 2], target: [3, 4] };
  assert.equal(parsePoints(JSON.stringify({ drags: Array(32).fill(drag) })).drags.length, 32);
  // over the cap: parsed and drawn (the editor marks them and lets the user remove them), not an error
  assert.equal(parsePoints(JSON.stringify({ drags: Array(33).fill(drag) })).drags.length, 33);
  assert.equal(parsePoints(JSON.stringify(Array(66).fill([1, 2]))).drags.length, 33);
  assert.match(parsePoints(JSON.stringify({ drags: Array(257).fill(drag) })).error, /257 drags, at most 32/);
  assert.match(parsePoints(JSON.stringify(Array(514).fill([1, 2]))).error, /257 drags/);
  assert.equal(formatPoints(null, null, []), '{"version":1,"width":null,"height":null,"drags":[]}');
  assert.deepEqual(parsePoints(formatPoints(null, null, [])), { width: null, height: null, drags: [] });
});

test("formatPoints writes the v1 JSON the node parses, rounded to 0.01 px", () => {
  const text = formatPoints(320, 224, [{ handle: [10.123, 20], target: [30, 40.456] }]);
  assert.deepEqual(JSON.parse(text),
    { version: 1, width: 320, height: 224, drags: [{ handle: [10.12, 20], target: [30, 40.46] }] });
  assert.deepEqual(parsePoints(text).drags, [{ handle: [10.12, 20], target: [30, 40.46] }]);
});

test("parseAnnotated splits LoadImage names", () => {
  assert.deepEqual(parseAnnotated("a.png"), { filename: "a.png", subfolder: "", type: "input" });
  assert.deepEqual(parseAnnotated("clipspace/clipspace-mask-1.png [input]"),
    { filename: "clipspace-mask-1.png", subfolder: "clipspace", type: "input" });
  assert.deepEqual(parseAnnotated("x/y/z.webp [output]"), { filename: "z.webp", subfolder: "x/y", type: "output" });
  assert.deepEqual(parseAnnotated("t.png [temp]"), { filename: "t.png", subfolder: "", type: "temp" });
});

test("image pixels survive the round trip through any canvas size", () => {
  for (const [cw, ch, W, H] of [[600, 400, 320, 224], [200, 500, 320, 224], [1000, 1000, 64, 48],
                                [300, 200, 2048, 1536], [421, 317, 513, 777]]) {
    const L = fitLayout(cw, ch, W, H);
    assert.ok(L.W * L.s <= cw + 1e-9 && L.H * L.s <= ch + 1e-9 && L.ox >= -1e-9 && L.oy >= -1e-9);
    for (const p of [[0, 0], [W - 1, H - 1], [Math.floor(W / 3), Math.floor(H / 2)]]) {
      assert.deepEqual(canvasToImage(imageToCanvas(p, L), L), p, `${cw}x${ch} ${W}x${H} ${p}`);
    }
  }
});

test("clicks off the image are ignored, drags are clamped into it", () => {
  const L = fitLayout(600, 400, 320, 224);
  assert.equal(canvasToImage([L.ox - 5, L.oy + 10], L), null);
  assert.deepEqual(canvasToImage([L.ox - 5, L.oy + 10], L, { clampToImage: true }), [0, Math.round(10 / L.s)]);
  assert.deepEqual(canvasToImage([599, 399], L, { clampToImage: true }), [319, 223]);
});

test("scaleDrags follows the node's rescaling rule", () => {
  assert.deepEqual(scaleDrags([{ handle: [32, 32], target: [64, 40] }], 128, 96, 64, 48),
    [{ handle: [16, 16], target: [32, 20] }]);
});
