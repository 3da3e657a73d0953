"""`to-hf` -> `from-hf` for every connector and 2D rotary layout: the params and the config come back
identical; a model transformers can run (LLaVA's projector) is written as LLaVA, one it cannot (any
other connector) keeps its parts under config.json['vlm_spatial'], a model_type transformers
refuses, and says so; a learned layout's frequencies travel as their own tensors."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from vlm_spatial import checkpoint
from vlm_spatial.convert import hf_llava
from vlm_spatial.convert import params as params_lib
from vlm_spatial.convert.__main__ import main
from vlm_spatial.models.presets import vlm_config
from vlm_spatial.models.vlm import VLM

transformers = pytest.importorskip("transformers")


def _checkpoint(path, connector, layout):
    base = vlm_config("tiny-clip", "tiny-llama")
    cfg = dataclasses.replace(base, projector=connector, projector_grid=3, projector_num_queries=5, projector_depth=1,
                              vision=dataclasses.replace(base.vision, rope2d=True, rope2d_layout=layout,
                                                         rope2d_layers=(1,), keep_abs_pos_emb=False))
    params = nnx.to_pure_dict(nnx.state(VLM(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: np.asarray(a) + 0.01 * rng.normal(size=a.shape).astype(np.float32), params)
    checkpoint.write_model(str(path), cfg, params)
    return cfg, params


@pytest.mark.parametrize("connector,layout", [("mlp2x_gelu", "pixtral"), ("mlp2x_gelu", "mixed"), ("linear", "dinov3"),
                                              ("pool2d", "axial"), ("c_abstractor", "mixed"), ("resampler", "axial")])
def test_to_hf_from_hf_round_trips_every_part_exactly(tmp_path, capsys, connector, layout):
    cfg, params = _checkpoint(tmp_path / "ckpt", connector, layout)
    assert main(["to-hf", "--src", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    said = capsys.readouterr().out
    hf = json.load(open(tmp_path / "hf" / "config.json"))
    if connector == "mlp2x_gelu":
        assert hf["model_type"] == "llava" and "transformers cannot run" not in said
        model, info = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"),
                                                                                output_loading_info=True)
        assert not info["missing_keys"]  # transformers runs it (without the 2D-RoPE, as the notes say)
        assert sorted(info["unexpected_keys"]) == sorted(
            f"model.vision_tower.vlm_spatial.layers.{i}.rope_freqs" for i in range(2) if layout == "mixed")
    else:
        assert hf["model_type"] == hf_llava.NOT_LLAVA and hf["vlm_spatial"]["projector"]["projector"] == connector
        assert f"transformers cannot run this model: it has no counterpart of the {connector!r} connector" in said
        with pytest.raises(ValueError):
            transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert ("learned rotary frequencies" in said) == (layout == "mixed") and "WITHOUT its RoPE" in said
    assert main(["from-hf", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back_cfg = checkpoint.read_config(str(tmp_path / "back"))
    assert back_cfg == cfg
    target, shardings = params_lib.abstract_params(lambda: VLM(back_cfg, rngs=nnx.Rngs(1)))
    back = flatten_dict(checkpoint.read_params(str(tmp_path / "back"), target, shardings))
    want = flatten_dict(params)
    assert back.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(back[k]), want[k], err_msg="/".join(k))
