"""The LLaVA composite: VisionEncoder -> feature layer/select -> connector -> merge -> Decoder.

Matches `transformers.LlavaForConditionalGeneration`: the encoder's `hidden_states[feature_layer]`
(default -2, before any post-norm), `'default'` selection drops token 0 (CLS), `'full'` keeps every
token; the connector (`vlm_spatial.models.connectors`, LLaVA's projector) maps the features to the
decoder width and owns how many image tokens they become; those replace the embeddings of the
image-token positions, in order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models import connectors
from vlm_spatial.models.connectors import FeatureLayout, ProjectorConfig
from vlm_spatial.models.decoder import Decoder, DecoderConfig, positions_from_mask
from vlm_spatial.models.vision import VisionConfig, VisionEncoder

FEATURE_SELECT = ("default", "full")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """A LLaVA-style model: encoder, connector, decoder and how image features are picked.

    `projector` names a registered connector (`vlm_spatial.models.connectors`)."""

    vision: VisionConfig
    decoder: DecoderConfig
    image_token_id: int
    projector: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: str = "default"

    def __post_init__(self):
        if self.vision_feature_select not in FEATURE_SELECT:
            raise ValueError(
                f"vision_feature_select={self.vision_feature_select!r}; expected one of {FEATURE_SELECT}"
            )
        connectors.get(self.projector)

    @property
    def feature_layout(self) -> FeatureLayout:
        """What the connector receives per image: the encoder's tokens after the feature
        selection ('default' drops token 0 as transformers does: the CLS token, else a patch;
        register tokens stay)."""
        v = self.vision
        prefix, patches, grid = v.num_prefix_tokens, v.num_patches, None if v.naflex else (v.grid_size, v.grid_size)
        if self.vision_feature_select == "default":
            if prefix:
                prefix -= 1
            else:
                patches, grid = patches - 1, None
        return FeatureLayout(prefix, patches, grid)

    @property
    def projector_config(self) -> ProjectorConfig:
        """The connector's config: features of the encoder's width to the decoder's."""
        return ProjectorConfig(kind=self.projector, vision_dim=self.vision.hidden_size,
                               text_dim=self.decoder.hidden_size, dtype=self.decoder.dtype,
                               param_dtype=self.decoder.param_dtype)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image, as the connector emits them."""
        return connectors.get(self.projector).num_tokens(self.feature_layout)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of `from_dict`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["vision"], d["decoder"] = self.vision.to_dict(), self.decoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        """Rebuild from `to_dict()` output."""
        d = dict(d)
        d["vision"] = VisionConfig.from_dict(d["vision"])
        d["decoder"] = DecoderConfig.from_dict(d["decoder"])
        return cls(**d)


def check_image_tokens(input_ids: np.ndarray, image_token_id: int, features_per_image: np.ndarray) -> None:
    """Raise ValueError if a row holds image tokens but not exactly its image's feature count.

    `input_ids [B,T]`; `features_per_image [B]`. Rows without image tokens are text-only and pass.
    """
    counts = (np.asarray(input_ids) == image_token_id).sum(axis=1)
    for row, (count, need) in enumerate(zip(counts, np.broadcast_to(features_per_image, counts.shape))):
        if count and count != need:
            raise ValueError(
                f"input_ids row {row} holds {count} image tokens (id {image_token_id}) but its image "
                f"gives {need} features; expand the image marker to exactly {need} tokens"
            )


def merge_image_features(
    embeds: jnp.ndarray, input_ids: jnp.ndarray, features: jnp.ndarray, image_token_id: int
) -> jnp.ndarray:
    """Write `features [B,N,D]` into `embeds [B,T,D]` at the image-token positions of `input_ids`.

    The k-th image token of row b receives `features[b, k]`, as Hugging Face's `masked_scatter`
    does when every image row has exactly N tokens (checked by `check_image_tokens` outside jit).
    """
    is_image = input_ids == image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, index[..., None], axis=1).astype(embeds.dtype)
    return jnp.where(is_image[..., None], gathered, embeds)


class VLM(nnx.Module):
    """LLaVA-1.5 composite. Parts are attributes usable alone: `vision`, `projector` (the
    connector), `decoder`."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision, rngs=rngs)
        self.projector = connectors.build(cfg.projector_config, rngs=rngs)
        self.decoder = Decoder(cfg.decoder, rngs=rngs)

    def image_features(self, pixel_values, *, pixel_attention_mask=None, spatial_shapes=None) -> jnp.ndarray:
        """Projected image features `[B,N,D]` from pixels `[B,H,W,3]` (or NaFlex patches `[B,P,3pp]`)."""
        out = self.vision(pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes)
        selected = out.hidden_states[self.cfg.vision_feature_layer]
        if self.cfg.vision_feature_select == "default":
            selected = selected[:, 1:]
        return self.projector(selected)

    def embed_inputs(
        self, input_ids, pixel_values=None, *, pixel_attention_mask=None, spatial_shapes=None
    ) -> jnp.ndarray:
        """Token embeddings `[B,T,D]` with image features written at the image-token positions."""
        embeds = self.decoder.embed(input_ids)
        if pixel_values is None:
            return embeds
        features = self.image_features(
            pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes
        )
        return merge_image_features(embeds, input_ids, features, self.cfg.image_token_id)

    def __call__(
        self,
        input_ids,
        pixel_values=None,
        *,
        attention_mask=None,
        positions=None,
        pixel_attention_mask=None,
        spatial_shapes=None,
        cache=None,
        output_hidden_states=True,
        output_logits=True,
    ):
        """Logits for `input_ids [B,T]` and one image per row `pixel_values [B,H,W,3]` (or None).

        `attention_mask [B,T]` (1 = real token) defaults to all ones; positions default to the
        count of real tokens before each one. Returns the decoder's output (`.logits` float32
        `[B,T,V]`, `.hidden_states`, `.cache`, `.last_hidden_state`); `output_hidden_states` and
        `output_logits` go to the decoder (training turns both off and computes a chunked loss).
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        embeds = self.embed_inputs(
            input_ids, pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes
        )
        return self.decoder(
            embeds, positions=positions, attention_mask=attention_mask, cache=cache,
            output_hidden_states=output_hidden_states, output_logits=output_logits,
        )
