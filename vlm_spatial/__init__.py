"""vlm_spatial: LLaVA-style vision-language models in JAX/Flax with 2D-RoPE image encoders.

`vlm_spatial.load(path)` opens a Hugging Face LLaVA directory or a vlm_spatial checkpoint
(see `vlm_spatial.api`).
"""


def load(path: str, **kwargs):
    """Open a model for inference; see `vlm_spatial.api.load` (imports JAX on first use)."""
    from vlm_spatial.api import load as _load

    return _load(path, **kwargs)
