"""Flax NNX models: VisionEncoder, Projector, Decoder and the LLaVA composite VLM."""
