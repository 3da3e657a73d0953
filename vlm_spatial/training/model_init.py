"""The model a training run starts from: its `VLMConfig`, and its first parameters.

Two starts (config field `model.random_init`):

* a checkpoint written by `python -m vlm_spatial.convert assemble` (`model.init_checkpoint`): the
  architecture is the checkpoint's, with the run's switches laid over it (2D-RoPE, image size,
  compute/param dtype, remat); the parameters are restored directly into their shards, cast to
  the master-weight dtype, and a learned position grid is resized (bicubic) to the run's image size;
* random weights from the presets `model.vision` / `model.decoder` (+ overrides): the tiny models
  of `configs/*.py:tiny`, and the abstract 7B model that `perf/` compiles without weights.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from vlm_spatial.models.positions import learned
from vlm_spatial.models.presets import vlm_config
from vlm_spatial.models.vision import VisionConfig
from vlm_spatial.models.vlm import VLM, VLMConfig


def _plain(d) -> dict:
    return {} if d is None else (d.to_dict() if hasattr(d, "to_dict") else dict(d))


def _run_switches(model_cfg) -> tuple[dict, dict]:
    """(vision, decoder) fields the run sets over any preset or checkpoint."""
    vision = dict(rope2d=bool(model_cfg.rope2d), rope2d_theta=float(model_cfg.rope2d_theta),
                  image_size=int(model_cfg.image_size), dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
                  remat_policy=model_cfg.remat_policy)
    decoder = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, remat_policy=model_cfg.remat_policy)
    return vision, decoder


def preset_vlm_config(model_cfg, vocab_size: int | None = None, image_token_id: int | None = None) -> VLMConfig:
    """`VLMConfig` from the config's presets and overrides (`model.vision`, `model.decoder`,
    `model.*_overrides`) and run switches. `vocab_size`/`image_token_id` default to the preset's
    (image token = last id)."""
    vision, decoder = _run_switches(model_cfg)
    return vlm_config(
        model_cfg.vision, model_cfg.decoder, vocab_size=vocab_size, image_token_id=image_token_id,
        vision_overrides={**_plain(model_cfg.vision_overrides), **vision},
        decoder_overrides={**_plain(model_cfg.decoder_overrides), **decoder},
    )


def checkpoint_vlm_config(model_cfg, ckpt_cfg: VLMConfig) -> VLMConfig:
    """The checkpoint's architecture with the run's switches (rope2d, image size, dtypes, remat).

    A fixed-resolution encoder's learned grid follows the new image size (`pos_grid=None`)."""
    vision, decoder = _run_switches(model_cfg)
    if not ckpt_cfg.vision.naflex:
        vision["pos_grid"] = None
    return dataclasses.replace(
        ckpt_cfg,
        vision=dataclasses.replace(ckpt_cfg.vision, **vision),
        decoder=dataclasses.replace(ckpt_cfg.decoder, **decoder),
    )


def resize_position_embedding(table: jax.Array, src: VisionConfig, dst: VisionConfig) -> jax.Array:
    """A learned position table `[cls + g0*g0, D]` of encoder `src` resized to `dst`'s grid
    `[cls + g1*g1, D]` by `positions.learned` (the resize of `convert assemble` and Hugging Face's
    `interpolate_pos_encoding`, as `src.pos_interpolation` says), the CLS row kept. Traceable."""
    return learned.resize_position_embedding(table, src.pos_grid_size, dst.pos_grid_size, int(src.cls_token),
                                             src.pos_interpolation)


def _abstract_params(cfg: VLMConfig) -> nnx.State:
    return nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def load_initial_params(path: str, ckpt_cfg: VLMConfig, run_cfg: VLMConfig, params_shardings: dict, mesh) -> dict:
    """Parameters of the checkpoint at `path` as the run's model wants them: restored shard by
    shard, position grid resized, cast to the run's param dtype, placed with `params_shardings`.
    Raises ValueError naming parameters the run's model needs but the checkpoint lacks."""
    from vlm_spatial import parallel
    from vlm_spatial.checkpoint import stage_dir
    from vlm_spatial.training.checkpoint import restore_params

    src_state = _abstract_params(ckpt_cfg)
    src_abstract = nnx.to_pure_dict(src_state)
    src = restore_params(stage_dir(path), src_abstract, parallel.param_shardings(src_state, mesh))
    want = flatten_dict(nnx.to_pure_dict(_abstract_params(run_cfg)))
    flat_src = {tuple(str(k) for k in p): v for p, v in flatten_dict(src).items()}
    missing = [".".join(map(str, p)) for p in want if tuple(map(str, p)) not in flat_src]
    if missing:
        raise ValueError(f"checkpoint {path} lacks parameters the model needs: {', '.join(missing)}")
    picked = {p: flat_src[tuple(map(str, p))] for p in want}

    def adapt(picked):
        out = {}
        for p, x in picked.items():
            x = x.astype(want[p].dtype)
            if p == ("vision", "position_embedding") and x.shape != want[p].shape:
                x = resize_position_embedding(x, ckpt_cfg.vision, run_cfg.vision)
            if x.shape != want[p].shape:
                raise ValueError(f"checkpoint parameter {'.'.join(map(str, p))} has shape {x.shape}, "
                                 f"the model wants {want[p].shape}")
            out[p] = x
        return unflatten_dict(out)

    return jax.jit(adapt, out_shardings=params_shardings)(picked)
