// Unit tests of web/js/fastdrag_stages.js: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { stageOf, stageRank } from "../../web/js/fastdrag_stages.js";

test("each stage's text is keyed by its stage, a leading note included", () => {
  assert.equal(stageOf("rank-4 LoRA on 32 attention projections, 2 steps x batch 4 in 1.2 s; loss 0.9 -> 0.8"), "lora");
  assert.equal(stageOf("steps = 0: no LoRA, model passed through"), "lora");
  assert.equal(stageOf("LCM sampling detected: ...\ninverted to t=601 in 7 steps on SD1.x"), "inverted");
  assert.equal(stageOf("t=601: 3 iterations, 2 Adam steps, stopped at the step limit"), "dragged");
  assert.equal(stageOf("sampled t=601 -> 0 in 7 steps on SD1.x; 28 hits"), "sampled");
  assert.equal(stageOf("t=681 -> 0 in 35 steps on SD1.x; reference control on blocks 10-15"), "sampled");
  assert.equal(stageOf("something else"), "something else");
});

test("stages sort in pipeline order, unknown texts last", () => {
  const keys = ["sampled", "other", "dragged", "inverted", "lora"].sort((a, b) => stageRank(a) - stageRank(b));
  assert.deepEqual(keys, ["lora", "inverted", "dragged", "sampled", "other"]);
});
