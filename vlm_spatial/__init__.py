"""vlm_spatial: LLaVA-style vision-language models in JAX/Flax with 2D-RoPE image encoders."""
