"""The notebooks run headless, top to bottom, in a fresh kernel (nbclient) on the tiny settings they
take from `VLM_SPATIAL_NOTEBOOK_FAST=1`, in a temporary working directory, as a researcher would
run them: the ablation first (with its knobs edited), then the inspection of its newest run."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# the knobs a researcher edits, set away from the defaults so the test sees them reach the model
KNOB_EDITS = {'family="clip"': 'family="aimv2"', "rope2d_theta=100.0": "rope2d_theta=1000.0",
              "rope2d_layers=None": "rope2d_layers=[0]", "keep_abs_pos_emb=True": "keep_abs_pos_emb=False"}


def _execute(nb, cwd: Path):
    """Run every cell of `nb` in a kernel started in `cwd`; a failing cell raises CellExecutionError
    naming the cell and its traceback."""
    # one CPU device, as on a laptop (conftest's 8 fake devices make these runs ~1.4x slower)
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["VLM_SPATIAL_NOTEBOOK_FAST"] = "1"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return nb


def _outputs(nb, kind: str) -> list:
    """Every output of mime type `kind` ('image/png', 'text/markdown') or stream text ('stream')."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.output_type == "stream":
                found.append(out.text)
            elif kind in out.get("data", {}):
                found.append(out.data[kind])
    return found


def test_notebooks_are_saved_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def test_ablation_then_inspect(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "rope2d_ablation.ipynb", as_version=4)
    knobs = next(c for c in nb.cells if c.cell_type == "code" and "KNOBS = dict(" in c.source)
    for old, new in KNOB_EDITS.items():
        assert old in knobs.source, f"knob {old!r} not in the notebook's knob cell"
        knobs.source = knobs.source.replace(old, new)
    _execute(nb, tmp_path)

    runs = tmp_path / "runs" / "rope2d_ablation"
    base_dir, = runs.glob("aimv2-*")
    rope_dir, = runs.glob("aimv2_2drope-*")
    # the two models differ in the 2D-RoPE settings only, and the knobs reached the encoder
    cfg = {d: json.loads((d / "checkpoints" / "finetune" / "model_config.json").read_text())
           for d in (base_dir, rope_dir)}
    base_v, rope_v = cfg[base_dir].pop("vision"), cfg[rope_dir].pop("vision")
    assert cfg[base_dir] == cfg[rope_dir]
    assert {k for k in base_v if base_v[k] != rope_v[k]} == {"rope2d", "rope2d_theta", "rope2d_layers",
                                                            "keep_abs_pos_emb"}
    assert (rope_v["family"], rope_v["rope2d"], rope_v["rope2d_theta"], rope_v["rope2d_layers"],
            rope_v["keep_abs_pos_emb"]) == ("aimv2", True, 1000.0, [0], False)
    assert base_v["rope2d"] is False

    assert "score depends only on (dr, dc): True" in "".join(_outputs(nb, "stream"))
    assert len(_outputs(nb, "image/png")) == 4  # RoPE heatmap, test questions, accuracy bars, losses
    table, = _outputs(nb, "text/markdown")
    rows = {m[0]: m[1:] for m in re.findall(r"^\| (\S+) \| (\S+) \| (\S+) \|$", table, re.M)}
    assert rows["family"] == ("baseline", "2D-RoPE")
    for name, workdir in (("baseline", base_dir), ("2D-RoPE", rope_dir)):
        metrics = json.loads((workdir / "eval" / "metrics.json").read_text())["synthetic"]
        col = rows["family"].index(name)
        assert {f: float(rows[f][col]) for f in metrics["by_family"]} == {f: round(a, 3) for f, a in
                                                                          metrics["by_family"].items()}
        assert float(rows["**all**"][col].strip("*")) == round(metrics["accuracy"], 3)

    inspect = _execute(nbformat.read(NOTEBOOKS / "inspect_model.ipynb", as_version=4), tmp_path)
    text = "".join(_outputs(inspect, "stream"))
    assert rope_dir.name in text and "encoder aimv2" in text and "2D-RoPE True" in text
    assert len(_outputs(inspect, "image/png")) == 2  # answered questions, per-layer norm maps

