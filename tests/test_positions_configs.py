"""configs/positions.py names the placements of 2D position as experiments; each (paper and :tiny)
parses and builds the model it names, and a run from a checkpoint takes the placement knobs: a
layout whose frequencies the checkpoint lacks starts them at their axial init, a connector with
other settings starts fresh, everything else is the checkpoint's."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import positions as experiments
from vlm_spatial import checkpoint, parallel, runconfig
from vlm_spatial.models import presets
from vlm_spatial.models.positions.rope2d import axial_frequencies
from vlm_spatial.models.vlm import VLM
from vlm_spatial.training import model_init

DEVICES = 8


@pytest.mark.parametrize("size", ["", ":tiny"])
@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_each_experiment_builds_the_model_it_names(name, size):
    c = experiments.get_config(name + size)
    if size:
        model = runconfig.parse(c, DEVICES).model
    else:  # the paper path's model section, built at random (its data and checkpoint paths are the user's)
        model = runconfig.ModelConfig(**{**c.model.to_dict(), "random_init": True})
    cfg = model.vlm_config()
    knobs = experiments.EXPERIMENTS[name][1]
    assert cfg.vision.rope2d == knobs["rope2d"] and cfg.projector == knobs.get("connector", "mlp2x_gelu")
    assert cfg.vision.family == "clip" and (cfg.vision.rope2d_layout == "axial")
    assert cfg.num_image_tokens == {"pool2d": (cfg.vision.grid_size // 2) ** 2,
                                    "c_abstractor": model.connector_grid ** 2,
                                    "resampler": model.connector_num_queries}.get(cfg.projector, cfg.vision.grid_size ** 2)


def test_unknown_experiment_is_named():
    with pytest.raises(ValueError, match="encoder_rope, learned_only"):
        experiments.get_config("spiral:tiny")


def test_a_run_from_a_checkpoint_takes_the_placement_knobs(tmp_path):
    src = presets.vlm_config("tiny-clip", "tiny-llama")
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: VLM(src, rngs=nnx.Rngs(0))), nnx.Param))
    checkpoint.write_model(str(tmp_path / "ckpt"), src, jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), params))
    c = experiments.get_config("abstractor:tiny")
    c.model.random_init, c.model.init_checkpoint, c.model.rope2d_layout = False, str(tmp_path / "ckpt"), "mixed"
    run = runconfig.parse(c, DEVICES)
    cfg = run.model.vlm_config(checkpoint.read_config(str(tmp_path / "ckpt")))
    assert (cfg.vision.rope2d_layout, cfg.projector, cfg.projector_grid) == ("mixed", "c_abstractor", 2)
    mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
    shardings = parallel.param_shardings(nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0))), nnx.Param), mesh)
    got = model_init.load_initial_params(str(tmp_path / "ckpt"), src, cfg, shardings, mesh, seed=3)
    freqs = np.asarray(got["vision"]["layers"]["attn"]["rope_freqs"])
    want = np.broadcast_to(np.asarray(axial_frequencies(cfg.vision.head_dim, cfg.vision.rope2d_theta)), freqs.shape[1:])
    np.testing.assert_array_equal(freqs, np.broadcast_to(want, freqs.shape))
    assert "s1" in got["projector"] and not np.allclose(np.asarray(got["projector"]["linear_1"]["kernel"]), 0.5)
    np.testing.assert_array_equal(np.asarray(got["vision"]["layers"]["attn"]["q_proj"]["kernel"]), 0.5)
    # the same connector kind with other settings is another connector: a fresh one
    c.model.connector_grid = 3
    run = runconfig.parse(c, DEVICES)
    assert run.model.vlm_config(cfg).num_image_tokens == 9
    # a setting the connector does not read is refused when set
    c.model.connector_pool = 3
    problems = pytest.raises(runconfig.ConfigError, runconfig.parse, c, DEVICES,
                             overrides=["model.connector_pool"]).value.problems
    assert problems[0].startswith("model.connector_pool: set but not read") and "'c_abstractor'" in problems[0]
