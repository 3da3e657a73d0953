"""The first parameters of a training run that starts from a checkpoint.

The run's `VLMConfig` is built by `vlm_spatial.runconfig.ModelConfig.vlm_config` (the checkpoint's
architecture with the run's knobs laid over it); `load_initial_params` gives that model its
parameters from the checkpoint: restored directly into their shards, cast to the master-weight
dtype, a learned position grid resized (bicubic, as `convert assemble`) to the run's image size, a
position table the run drops (`keep_abs_pos_emb=False`) left out, a fresh projector when the
run's connector is of another kind or settings than the checkpoint's, and a learned rotary layout's
frequencies at their initial value when the checkpoint has none. A random init needs none of this
(`loop.StageSetup.init_state()`).
"""
from __future__ import annotations

import jax
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from vlm_spatial import checkpoint, parallel
from vlm_spatial.convert.assemble import fresh_projector
from vlm_spatial.models.positions.learned import resize_position_embedding
from vlm_spatial.models import connectors
from vlm_spatial.models.vlm import VLM, VLMConfig

POSITION_TABLE = ("vision", "position_embedding")
# A learned rotary layout's frequencies ('mixed'): a checkpoint of a fixed layout has none; they start
# at their initial value (the axial frequencies, the same for every seed).
ROPE_FREQS = ("vision", "layers", "attn", "rope_freqs")


def _connector(cfg: VLMConfig) -> tuple:
    """The connector's kind and the settings it reads: another one gets a fresh projector."""
    return (cfg.projector,) + tuple(getattr(cfg, f"projector_{k}") for k in connectors.reads(cfg.projector))


def _initial_rope_freqs(cfg: VLMConfig, sharding) -> jax.Array:
    """`ROPE_FREQS` as `VLM(cfg)` initialises them (only they are materialised), placed with `sharding`."""

    def init():
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            return VLM(cfg, rngs=nnx.Rngs(0)).vision.layers.attn.rope_freqs[...]

    return jax.jit(init, out_shardings=sharding)()


def _abstract_params(cfg: VLMConfig) -> nnx.State:
    return nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def load_initial_params(path: str, ckpt_cfg: VLMConfig, run_cfg: VLMConfig, params_shardings: dict, mesh,
                        seed: int = 0) -> dict:
    """Parameters of the checkpoint at `path` (written as `ckpt_cfg`) as the run's model (`run_cfg`)
    wants them, placed with `params_shardings` on `mesh`: the position grid resized, every array cast
    to the run's param dtype; when the connector kinds differ the projector is initialised afresh
    from `seed` (as `VLM(run_cfg, rngs=nnx.Rngs(seed))` would). Raises ValueError naming parameters
    the run's model needs but the checkpoint lacks, or whose shapes differ."""
    src_state = _abstract_params(ckpt_cfg)
    src = checkpoint.read_params(path, nnx.to_pure_dict(src_state), parallel.param_shardings(src_state, mesh))
    want = flatten_dict(nnx.to_pure_dict(_abstract_params(run_cfg)))
    fresh = ("projector",) if _connector(run_cfg) != _connector(ckpt_cfg) else ()
    flat_src = {tuple(str(k) for k in p): v for p, v in flatten_dict(src).items()}
    new_freqs = ROPE_FREQS in want and ROPE_FREQS not in flat_src
    load = [p for p in want if p[0] not in fresh and not (new_freqs and p == ROPE_FREQS)]
    missing = [".".join(map(str, p)) for p in load if tuple(map(str, p)) not in flat_src]
    if missing:
        raise ValueError(f"checkpoint {path} lacks parameters the model needs: {', '.join(missing)}")
    picked = {p: flat_src[tuple(map(str, p))] for p in load}
    src_grid, dst_grid = ckpt_cfg.vision.pos_grid_size, run_cfg.vision.pos_grid_size

    def adapt(picked):
        out = {}
        for p, x in picked.items():
            x = x.astype(want[p].dtype)
            if p == POSITION_TABLE and x.shape != want[p].shape:
                x = resize_position_embedding(x, src_grid, dst_grid, int(ckpt_cfg.vision.cls_token),
                                              ckpt_cfg.vision.pos_interpolation)
            if x.shape != want[p].shape:
                raise ValueError(f"checkpoint parameter {'.'.join(map(str, p))} has shape {x.shape}, "
                                 f"the model wants {want[p].shape}")
            out[p] = x
        return unflatten_dict(out)

    flat_sh = flatten_dict(params_shardings)
    loaded_sh = unflatten_dict({p: v for p, v in flat_sh.items() if p in picked})
    params = jax.jit(adapt, out_shardings=loaded_sh)(picked)
    if new_freqs:
        params["vision"]["layers"]["attn"]["rope_freqs"] = _initial_rope_freqs(run_cfg, flat_sh[ROPE_FREQS])
    for part in fresh:
        params[part] = fresh_projector(run_cfg, seed, params_shardings[part])
    return params
