// Pure part of the node summaries (fastdrag_text.js): which pipeline stage a node's text belongs to.
// FastDragEdit and DragDiffusionEdit receive the texts of their expanded stage nodes and show one line
// per stage, in pipeline order. ComfyUI loads every .js in web/ as an extension: this one only exports.
// Unit-tested under node (tests/js/) and against the texts of a real DragDiffusionEdit run.

/** [stage, pattern] in pipeline order. A text may start with a note ("LCM sampling detected: ..."),
 *  so the whole text is searched. */
export const STAGES = [
  ["lora", /\brank-\d+ LoRA\b|\bno LoRA\b/],
  ["inverted", /\binverted to t=/],
  ["dragged", /\biterations?\b[^\n]*\bAdam steps?\b/],
  ["sampled", /\bsampled t=|\bt=\d+ -> 0 in \d+ steps\b/],
];

/** The stage key of a summary text; an unknown text is keyed by itself. */
export function stageOf(text) {
  const hit = STAGES.find(([, re]) => re.test(text));
  return hit ? hit[0] : text;
}

/** Sort rank of a stage key: the known stages in pipeline order, anything else after them. */
export function stageRank(key) {
  const i = STAGES.findIndex(([name]) => name === key);
  return i < 0 ? STAGES.length : i;
}
