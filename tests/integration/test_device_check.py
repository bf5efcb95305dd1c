"""benchmarks/device_check.py --smoke on the session server: the GPU figures' script runs end to end on
the tiny checkpoints (every measurement, the table, the JSON), so it cannot rot between GPU runs."""

import json
import math
import os
import sys

from comfy_server import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import device_check  # noqa: E402


def test_device_check_smoke_runs_every_measurement(server, tmp_path):
    res = device_check.Check(server, device_check.PLANS["smoke"], server.root).run_all()
    (fd,), dd, prec = res["fastdrag"], res["dragdiffusion"], res["precision"]
    assert fd["edit_s"] > 0 and fd["redrag_s"] > 0 and fd["device"] == "cpu" and fd["peak_bytes"] is None
    assert "K/V entries" in fd["kv_store"] and "on cpu" in fd["kv_store"]
    assert dd["drag_iteration_s"] > 0 and dd["edit_s"] > 0 and math.isfinite(dd["lora_step_s"])
    # the extrapolation to the official 80 LoRA steps and 80 iterations, from the measured parts
    n = device_check.OFFICIAL_DD_STEPS
    assert math.isclose(dd["edit_80_80_s"], dd["edit_s"] + (n - dd["edit_lora_steps"]) * dd["lora_step_s"]
                        + (n - dd["edit_drag_steps"]) * dd["drag_iteration_s"])
    # fp16 compute of the tiny model on the CPU: finite, and within a tenth of the latent's range of fp32
    assert prec["finite"] and prec["latent_max_abs"] < 0.1 * prec["latent_range"], prec
    text = device_check.table(res)
    for row in ("FastDragEdit sd15 64^2", "re-drag", "LoRA step", "drag iteration", "80/80", "fp16 vs fp32"):
        assert row in text, row
    path = tmp_path / "dc.json"
    path.write_text(json.dumps(res))
    assert json.loads(path.read_text())["plan"]["full_weights"] is False
