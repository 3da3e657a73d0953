"""The model a run starts from: an assembled checkpoint with the run's switches laid over it, its
parameters restored into their shards as fp32 master weights, the learned position grid resized."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import aimv2_2drope
from vlm_spatial import checkpoint, parallel, runconfig
from vlm_spatial.models.positions.learned import resize_position_embedding
from vlm_spatial.models.presets import vlm_config
from vlm_spatial.models.vlm import VLM
from vlm_spatial.training import model_init


def test_initial_params_from_checkpoint_resized_cast_and_sharded(tmp_path):
    # an "assembled" bf16 checkpoint of a 32 px AIMv2-style model (4x4 learned position grid)
    src = vlm_config("tiny-aimv2", "tiny-llama", vision_overrides=dict(param_dtype="bfloat16"),
                     decoder_overrides=dict(param_dtype="bfloat16"))
    params = nnx.to_pure_dict(nnx.state(VLM(src, rngs=nnx.Rngs(0)), nnx.Param))
    checkpoint.write_model(str(tmp_path / "ckpt"), src, params, None)
    c = aimv2_2drope.get_config("tiny")
    c.model.random_init, c.model.init_checkpoint = False, str(tmp_path / "ckpt")
    c.model.image_size = 48  # 6x6 grid
    run = runconfig.parse(c, jax.device_count())
    run_cfg = run.model.vlm_config(checkpoint.read_config(str(tmp_path / "ckpt")))
    assert (run_cfg.vision.rope2d, run_cfg.vision.image_size, run_cfg.vision.param_dtype) == (True, 48, "float32")
    assert run_cfg.decoder.num_layers == src.decoder.num_layers  # the architecture is the checkpoint's
    mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
    abstract = nnx.state(nnx.eval_shape(lambda: VLM(run_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = parallel.param_shardings(abstract, mesh)
    got = model_init.load_initial_params(str(tmp_path / "ckpt"), src, run_cfg, shardings, mesh)
    kernel = got["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.dtype == jnp.float32 and kernel.sharding == shardings["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), np.asarray(params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"],
                                                                  np.float32))
    pos = np.asarray(got["vision"]["position_embedding"])
    # the same bicubic as `convert assemble`, which tests it against HF's interpolate_pos_encoding
    want = resize_position_embedding(np.asarray(params["vision"]["position_embedding"], np.float32), 4, 6)
    assert pos.shape == (36, src.vision.hidden_size)
    np.testing.assert_allclose(pos, want, rtol=1e-5, atol=1e-6)
    # the restored tree is exactly the run model's parameter tree
    assert jax.tree.structure(got) == jax.tree.structure(nnx.to_pure_dict(abstract))
