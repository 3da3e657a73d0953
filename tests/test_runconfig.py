"""The typed run config (`vlm_spatial.runconfig`): no dead fields - every leaf of every variant's
config (paper and :tiny) reaches the typed config and changes what the run builds, or is refused
naming it - and the ablation knobs reach the encoder of a run that starts from an assembled
checkpoint, through `python -m vlm_spatial.main`."""
import copy
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from vlm_spatial import checkpoint, parallel, runconfig
from vlm_spatial.models import families, presets
from vlm_spatial.models.families import VISION_PRESETS
from vlm_spatial.training import data as data_lib
from vlm_spatial.training import job, model_init

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("common", "__init__"))
DEVICES = 8
# the knobs that must change the built model on both paths (random init and checkpoint)
MODEL_KNOBS = ("model.rope2d", "model.image_size", "model.vision_feature_layer", "model.vision_feature_select",
               "model.connector", "model.dtype", "model.param_dtype", "model.remat_policy")
ROPE_KNOBS = ("model.rope2d_theta", "model.rope2d_layers", "model.keep_abs_pos_emb")


def get_config(variant: str, arg):
    return __import__(f"configs.{variant}", fromlist=["get_config"]).get_config(arg)


def leaves(node, prefix=""):
    """{dotted path: value} of a ConfigDict; an empty group (e.g. `vision_overrides={}`) is a leaf."""
    out = {}
    for k in node.keys():
        v, path = node[k], f"{prefix}{k}"
        if hasattr(v, "keys") and len(v.keys()):
            out.update(leaves(v, path + "."))
        else:
            out[path] = v.to_dict() if hasattr(v, "to_dict") else v
    return out


def set_leaf(config, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def get_path(d: dict, path: str):
    for p in path.split("."):
        d = d[p]
    return d


def typed_field(path: str) -> dataclasses.Field | None:
    """The dataclass field a dotted config path lands on (None inside an overrides dict)."""
    cls, field, parts = runconfig.RunConfig, None, path.split(".")
    while parts:
        if cls is None:
            return None
        name = parts.pop(0)
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        if name == "stages":
            cls = runconfig.StageConfig
            parts.pop(0)  # the stage's name
            continue
        hint = typing.get_type_hints(cls)[name]
        cls = hint if dataclasses.is_dataclass(hint) else None
    return field


def alternatives(path: str, value, alt_paths: dict) -> list:
    """Values to try instead of `value` at `path`: every other choice, else one changed value."""
    f = typed_field(path)
    md = f.metadata if f is not None else {}
    if md.get("choices") is not None:
        return [c for c in md["choices"]() if c != value]
    if path in alt_paths:
        return [alt_paths[path]]
    if path == "eval.benchmarks":  # registry names, any case
        from vlm_spatial.evaluation.benchmarks import list_benchmarks

        return [value[:-1] if len(value) > 1 else value + tuple(b for b in list_benchmarks() if b not in value)[:1]]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [4 if value == -1 else value + 1 if value <= 0 else 2 * value]  # -1 -> 4: (1, 4, 1) != 8 devices
    if isinstance(value, float):
        return [2 * value if value else 0.5]
    if isinstance(value, str):
        return [value + "_alt"]
    if value is None:
        return [(0,)]
    if isinstance(value, dict):
        return [{"num_layers": 1}]
    if isinstance(value, tuple) and md.get("each") is not None:
        extra = [c for c in md["each"]() if c not in value]
        return [value[:-1] if len(value) > 1 else value + tuple(extra[:1])]
    if isinstance(value, tuple):
        return [value[1:] if len(value) > 1 else value + (2 * value[-1],)]
    raise AssertionError(f"no perturbation for {path}={value!r}")


def checkpoint_config(config):
    """The config of a tiny assembled checkpoint whose encoder is of the variant's family."""
    return presets.vlm_config(families.tiny_preset(config.model.vision), "tiny-llama")


def paths_for(config, tmp: Path) -> tuple[dict, dict]:
    """({path field: an existing path}, {path field: another existing one}) for a paper config."""
    ckpt_cfg = checkpoint_config(config)
    for name in ("ckpt", "ckpt_alt"):
        (tmp / name / "tokenizer").mkdir(parents=True, exist_ok=True)
        (tmp / name / "model_config.json").write_text(json.dumps(ckpt_cfg.to_dict()))
    given, alt = {"model.init_checkpoint": str(tmp / "ckpt")}, {"model.init_checkpoint": str(tmp / "ckpt_alt")}
    for s in ("pretrain", "finetune"):
        for name in ("", "_alt"):
            (tmp / f"{s}{name}.json").write_text("[]")
            (tmp / f"{s}_images{name}").mkdir(exist_ok=True)
        given.update({f"stages.{s}.data_file": str(tmp / f"{s}.json"), f"stages.{s}.image_root": str(tmp / f"{s}_images")})
        alt.update({f"stages.{s}.data_file": str(tmp / f"{s}_alt.json"),
                    f"stages.{s}.image_root": str(tmp / f"{s}_images_alt")})
    for name in ("bench", "bench_alt"):
        (tmp / name).mkdir(exist_ok=True)
    given["eval.data_root"], alt["eval.data_root"] = str(tmp / "bench"), str(tmp / "bench_alt")
    return given, alt


def what_the_run_builds(run: runconfig.RunConfig) -> dict:
    """Everything the job builds from `run`, by the job's own functions: {component: value}."""
    ckpt = None if run.model.random_init else checkpoint.read_config(run.model.init_checkpoint)
    synth = data_lib.synthetic_dir(run, "/workdir") if run.data.kind == "synthetic" else None
    out = {"run": run.run, "variant": run.variant, "mesh": run.mesh.sizes(DEVICES)}
    if run.data.kind == "synthetic":
        out["synthetic"] = (synth, data_lib.synthetic_settings(run))
    if run.train_stages:
        vlm_cfg = run.model.vlm_config(ckpt)
        tok = data_lib.tokenizer_dir(run, synth)
        out.update(model=vlm_cfg, start=None if ckpt is None else run.model.init_checkpoint, tokenizer=tok,
                   checkpoint=run.checkpoint, log=run.log)
        for s in run.train_stages:
            out[f"stages.{s}"] = (job.stage_spec(run, s, 1000), data_lib.pipeline_args(run, s, vlm_cfg, tok, synth))
    if "eval" in run.run:
        out["eval"] = job.eval_args(run, "/workdir", synth)
    return out


def _refusal_names(problems: list[str], path: str) -> bool:
    for p in problems:
        field = p.split(":")[0]
        if path.startswith(field) or field.startswith(path) or path in p:
            return True
    return False


@pytest.mark.parametrize("arg", [None, "tiny"])
def test_every_config_leaf_reaches_the_typed_config_and_changes_the_run_or_is_refused(tmp_path, arg):
    for variant in VARIANTS:
        base = get_config(variant, arg)
        given, alt = ({}, {}) if arg else paths_for(base, tmp_path)
        for path, value in given.items():
            set_leaf(base, path, value)
        run = runconfig.parse(base, DEVICES)
        built = what_the_run_builds(run)
        outcome = {}
        for path, value in leaves(base).items():
            tried = []
            for new in alternatives(path, value, alt):
                c = copy.deepcopy(base)
                set_leaf(c, path, new)
                try:
                    run2 = runconfig.parse(c, DEVICES, overrides=[path])
                except runconfig.ConfigError as e:
                    assert _refusal_names(e.problems, path), (variant, arg, path, new, e.problems)
                    tried.append("refused")
                    continue
                got = get_path(run2.to_dict(), path)
                assert got == (tuple(new) if isinstance(new, list) else new), (variant, arg, path, new, got)
                built2 = what_the_run_builds(run2)
                tried.append({k for k in set(built) | set(built2) if built.get(k) != built2.get(k)})
            changed = [t for t in tried if t != "refused"]
            assert all(t == "refused" for t in tried) or any(changed), (variant, arg, path, "reaches no part of the run")
            outcome[path] = set().union(*changed) if any(changed) else "refused"
        # the ablation knobs change the built model on both paths; the trainable parts the stage
        rope = run.model.rope2d
        for knob in MODEL_KNOBS + (ROPE_KNOBS if rope else ()):
            assert outcome[knob] != "refused" and "model" in outcome[knob], (variant, arg, knob, outcome[knob])
        for s in ("pretrain", "finetune"):
            assert f"stages.{s}" in outcome[f"stages.{s}.trainable_parts"], (variant, arg, s)
        if not rope:
            assert all(outcome[k] == "refused" for k in ROPE_KNOBS), (variant, arg)


def test_unknown_and_ignored_fields_are_refused():
    c = get_config("aimv2_2drope", "tiny")
    c.model.vision_overrides.keep_abs_pos_emb = False  # a knob: has its own field
    c.model.decoder_overrides.vocab_size = 10  # from the tokenizer
    c.data.new_field = 1
    problems = pytest.raises(runconfig.ConfigError, runconfig.parse, c, DEVICES).value.problems
    assert sorted(p.split(":")[0] for p in problems) == ["data.new_field", "model.decoder_overrides.vocab_size",
                                                         "model.vision_overrides.keep_abs_pos_emb"], problems
    c = get_config("aimv2_2drope", "tiny")
    c.stages.pretrain.num_epochs, c.data.synthetic.num_train = 3.0, 64
    overrides = ["stages.pretrain.num_epochs", "stages.finetune.image_root", "data.synthetic.num_train"]
    problems = pytest.raises(runconfig.ConfigError, runconfig.parse, c, DEVICES, overrides=overrides).value.problems
    assert [p.split(":")[0] for p in problems] == overrides[:2], problems
    assert "num_steps=1000 is set" in problems[0] and "data.kind='synthetic'" in problems[1]


def test_a_run_from_a_checkpoint_takes_every_knob(tmp_path):
    """In process (the fast twin of the entry-point test below): the knobs laid over a checkpoint's
    architecture, and its parameters restored for that model - table dropped, fresh connector."""
    src = presets.vlm_config("tiny-aimv2", "tiny-llama")
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: presets_vlm(src)), nnx.Param))
    params = jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), params)
    checkpoint.write_model(str(tmp_path / "ckpt"), src, params)
    c = get_config("aimv2_2drope", "tiny")
    c.model.random_init, c.model.init_checkpoint = False, str(tmp_path / "ckpt")
    c.model.keep_abs_pos_emb, c.model.rope2d_layers, c.model.rope2d_theta = False, (1,), 50.0
    c.model.image_size, c.model.connector, c.model.vision_feature_layer = 48, "linear", -1
    run = runconfig.parse(c, DEVICES)
    cfg = run.model.vlm_config(checkpoint.read_config(str(tmp_path / "ckpt")))
    v = cfg.vision
    assert (v.rope2d, v.rope2d_theta, v.rope2d_layers, v.keep_abs_pos_emb, v.image_size) == (True, 50.0, (1,), False, 48)
    assert (cfg.projector, cfg.vision_feature_layer, cfg.decoder.num_layers) == ("linear", -1, src.decoder.num_layers)
    mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
    shardings = parallel.param_shardings(nnx.state(nnx.eval_shape(lambda: presets_vlm(cfg)), nnx.Param), mesh)
    got = model_init.load_initial_params(str(tmp_path / "ckpt"), src, cfg, shardings, mesh, seed=3)
    assert "position_embedding" not in got["vision"] and set(got["projector"]) == {"linear_1"}
    assert not np.allclose(np.asarray(got["projector"]["linear_1"]["kernel"]), 0.5)  # fresh, not the checkpoint's
    fresh = nnx.to_pure_dict(nnx.state(presets_vlm(cfg, seed=3).projector, nnx.Param))
    np.testing.assert_allclose(np.asarray(got["projector"]["linear_1"]["kernel"]),
                               np.asarray(fresh["linear_1"]["kernel"]), rtol=1e-6)  # jitted vs eager init
    np.testing.assert_array_equal(np.asarray(got["vision"]["patch_embedding"]["kernel"]), 0.5)
    # a knob the checkpoint cannot take is named before anything starts
    c.model.keep_abs_pos_emb, c.model.rope2d_layers = True, (5,)
    problems = pytest.raises(runconfig.ConfigError, runconfig.parse, c, DEVICES).value.problems
    assert [p.split(":")[0] for p in problems] == ["model.rope2d_layers"], problems
    no_table = dataclasses.replace(src, vision=dataclasses.replace(src.vision, rope2d=True, keep_abs_pos_emb=False))
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: presets_vlm(no_table)), nnx.Param))
    checkpoint.write_model(str(tmp_path / "no_table"), no_table, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), params))
    c.model.init_checkpoint, c.model.rope2d_layers = str(tmp_path / "no_table"), None
    problems = pytest.raises(runconfig.ConfigError, runconfig.parse, c, DEVICES).value.problems
    assert len(problems) == 1 and problems[0].startswith("model.keep_abs_pos_emb: ") and "no learned position" in problems[0]


def presets_vlm(cfg, seed=0):
    from vlm_spatial.models.vlm import VLM

    return VLM(cfg, rngs=nnx.Rngs(seed))


def _llava_data(tmp_path: Path) -> tuple[str, str]:
    """A LLaVA-Pretrain style JSON (the fixture's captions) with a small image at each path."""
    from PIL import Image

    records = json.loads((ROOT / "tests" / "fixtures" / "data" / "blip_laion_cc_sbu_558k_sample.json").read_text())
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for r in records:
        (root / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / r["image"])
    (tmp_path / "pretrain.json").write_text(json.dumps(records))
    return str(tmp_path / "pretrain.json"), str(root)


def paper_run_from_assembled_checkpoint(tmp_path: Path):
    """`python -m vlm_spatial.convert assemble` of tiny random HF parts (an AIMv2 tower of 3 layers
    at 32 px, a LLaMA LM) and a LLaVA-format caption file; returns `main(workdir, *extra)`, which
    runs `python -m vlm_spatial.main` on the paper config `configs/aimv2_2drope.py` from that
    checkpoint, one pretrain step, with the knobs keep_abs_pos_emb=False, rope2d_layers=(0,),
    rope2d_theta=50, image_size=48 on the command line."""
    pytest.importorskip("torch")
    from test_convert import cli, lm_dir, vision_dir

    vdir, _ = vision_dir(tmp_path, "aimv2")
    ldir, _ = lm_dir(tmp_path, "llama", 96)
    cli("assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt")
    assembled = checkpoint.read_config(str(tmp_path / "ckpt"))
    assert assembled.vision.uses_abs_pos_emb and not assembled.vision.rope2d and assembled.vision.image_size == 32
    data_file, image_root = _llava_data(tmp_path)
    args = [f"--config.model.init_checkpoint={tmp_path / 'ckpt'}", "--config.run=('pretrain',)",
            f"--config.stages.pretrain.data_file={data_file}", f"--config.stages.pretrain.image_root={image_root}",
            "--config.stages.pretrain.global_batch=2", "--config.stages.pretrain.num_steps=1",
            "--config.model.keep_abs_pos_emb=False", "--config.model.rope2d_layers=(0,)",
            "--config.model.rope2d_theta=50.0", "--config.model.image_size=48", "--config.model.dtype=float32",
            "--config.model.remat_policy=none", "--config.data.max_len=96", "--config.data.bucket_lengths=(96,)",
            "--config.data.num_workers=0", "--config.log.tensorboard=False", "--config.log.progress=False"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")

    def main(workdir, *extra):
        return subprocess.run([sys.executable, "-m", "vlm_spatial.main", "--config=configs/aimv2_2drope.py",
                               f"--workdir={workdir}", *args, *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    return main


def test_an_ignored_override_stops_a_paper_run_from_an_assembled_checkpoint(tmp_path):
    """The issue's case: `model.vision_overrides` on a run from a checkpoint is refused (exit 2), naming
    the first-class field instead of being silently ignored; nothing is written."""
    main = paper_run_from_assembled_checkpoint(tmp_path)
    r = main(tmp_path / "run", "--config.model.vision_overrides={'keep_abs_pos_emb': False}")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--config.model.vision_overrides.keep_abs_pos_emb: a run knob; set model.keep_abs_pos_emb" in r.stderr
    assert "--config.model.vision_overrides: set but not read by this run: the checkpoint's architecture" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_knobs_reach_the_encoder_of_a_paper_run_from_an_assembled_checkpoint(tmp_path):
    """The knobs on the command line reach the trained model's encoder: its model_config.json and
    `vlm_spatial.load` of the workdir have them, and the learned table is gone. (~40 s; the fast
    twins: the test above and `test_a_run_from_a_checkpoint_takes_every_knob`.)"""
    main = paper_run_from_assembled_checkpoint(tmp_path)
    r = main(tmp_path / "run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stage = tmp_path / "run" / "checkpoints" / "pretrain"
    v = json.loads((stage / "model_config.json").read_text())["vision"]
    assert (v["keep_abs_pos_emb"], v["rope2d_layers"], v["rope2d_theta"], v["rope2d"], v["image_size"]) == (
        False, [0], 50.0, True, 48)
    vlm = __import__("vlm_spatial").load(str(tmp_path / "run"))
    enc = vlm.model.vision
    assert (enc.cfg.keep_abs_pos_emb, enc.cfg.rope2d_layers, enc.cfg.rope2d_theta) == (False, (0,), 50.0)
    assert list(enc.cfg.rope_layer_mask()) == [True, False, False]
    assert "position_embedding" not in nnx.to_pure_dict(nnx.state(enc, nnx.Param))
