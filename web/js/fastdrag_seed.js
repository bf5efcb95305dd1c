// The pack's seeds are part of a method's settings, not a variation knob: the identity LoRA's seed
// (DragDiffusionLoRA, DragDiffusionEdit) and DIFT's noise seed (DragMeanDistance, whose official value
// is its default). ComfyUI's front end gives every INT input named "seed" a "control after generate"
// widget that starts on "randomize", so after one Queue the seed changed, the LoRA was retrained, the
// image re-inverted and MD left the official seed. A node of this pack added from the menu starts on
// "fixed" instead; the control stays, so a user can still pick "randomize", and a saved workflow keeps
// the value it saved (the graph's configure runs after nodeCreated and restores it).

const { app } = window.comfyAPI.app;

const CONTROL = "control_after_generate";

/** The control widget linked to the node's "seed" widget, or undefined. */
function seedControl(node) {
  const seed = node.widgets?.find((w) => w.name === "seed");
  return seed?.linkedWidgets?.find((w) => w.name === CONTROL)
    ?? node.widgets?.find((w) => w.name === CONTROL);
}

const LOADED = Symbol.for("fastdrag.seed.loaded");
if (!window[LOADED]) {
  window[LOADED] = true;
  const packNodes = new Set();
  app.registerExtension({
    name: "fastdrag.seed",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      const category = String(nodeData?.category ?? "");
      if (category === "FastDrag" || category.startsWith("FastDrag/")) packNodes.add(nodeData.name);
    },
    nodeCreated(node) {
      if (!packNodes.has(node.comfyClass ?? node.type)) return;
      const control = seedControl(node);
      if (control) control.value = "fixed";
    },
  });
}
