"""The paper's eight variants (CLIP, SigLIP, SigLIP2, AIMv2, each with and without 2D-RoPE) at tiny
scale on the synthetic spatial set, three seeds each: `python -m vlm_spatial.sweep
--config=configs/sweeps/paper_tiny.py --workdir=runs/paper_tiny` (from the repository root).

Each cell is `python -m vlm_spatial.main --config=configs/<variant>.py:tiny` with `OVERRIDES` and
`--config.seed=<seed>`; every cell answers the same test questions (one synthetic set, seeds change
the model init and the data order only). Fields: see `vlm_spatial/sweep.py`.
"""
import ml_collections

VARIANTS = ("clip", "clip_2drope", "siglip", "siglip_2drope", "siglip2", "siglip2_2drope", "aimv2", "aimv2_2drope")
OVERRIDES = (  # the tiny sweep recipe, laid over configs/common.py:tiny
    "log.progress=False",
)


def sweep(name: str, variants, seeds, overrides) -> ml_collections.ConfigDict:
    """A sweep config: `variants` (each `configs/<v>.py:tiny`) x `seeds`, every cell with `overrides`."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.variants = {v: dict(config=f"configs/{v}.py:tiny", overrides=()) for v in variants}
    c.seeds = tuple(seeds)
    c.overrides = tuple(overrides)
    c.consistency = True
    c.bootstrap = dict(num_samples=2000, seed=0)
    return c


def get_config():
    return sweep("paper_tiny", VARIANTS, (0, 1, 2), OVERRIDES)
