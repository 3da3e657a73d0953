"""The LLaVA composite: VisionEncoder -> feature layer/select -> connector -> merge -> Decoder.

Matches `transformers.LlavaForConditionalGeneration`: the encoder's `hidden_states[feature_layer]`
(default -2, before any post-norm; several layers are concatenated along the features),
`'default'` selection drops token 0 (CLS), `'full'` keeps every token; the connector
(`vlm_spatial.models.connectors`, LLaVA's projector) maps the features to the decoder width and
owns how many image tokens they become; those replace the embeddings of the image-token
positions, in order.

Images and rows: by default image b belongs to row b (`pixel_values [B, ...]`, a blank image for
a text-only row; what training and generation pass). As in transformers, `pixel_values` may
instead hold every image of the batch in order, several per row or none (`first_image [B]` says
where each row's images start; `image_layout` computes it from the image tokens).
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
    projector_act: str = "gelu"  # HF `projector_hidden_act` (the MLP connector's activation)
    projector_bias: bool = True  # HF `multimodal_projector_bias`
    projector_pool: int = 2  # the connector settings (`connectors.SETTINGS`; each read by some connectors)
    projector_grid: int = 12
    projector_num_queries: int = 64
    projector_depth: int = 3
    vision_feature_layer: int | tuple[int, ...] = -2  # several: their features are concatenated
    vision_feature_select: str = "default"

    def __post_init__(self):
        if isinstance(self.vision_feature_layer, list):
            object.__setattr__(self, "vision_feature_layer", tuple(self.vision_feature_layer))
        if self.vision_feature_select not in FEATURE_SELECT:
            raise ValueError(
                f"vision_feature_select={self.vision_feature_select!r}; expected one of {FEATURE_SELECT}"
            )
        n = self.vision.num_layers
        bad = [i for i in self.feature_layers if not -(n + 1) <= i <= n]
        if bad or not self.feature_layers:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer!r}: the encoder has hidden states "
                             f"0..{n} (or -{n + 1}..-1)")
        self.image_token_layout  # noqa: B018 - built once here to validate the connector and its features

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The encoder hidden states whose features are used, concatenated in this order."""
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

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
        return ProjectorConfig(kind=self.projector, vision_dim=self.vision.hidden_size * len(self.feature_layers),
                               text_dim=self.decoder.hidden_size, act=self.projector_act, use_bias=self.projector_bias,
                               features=self.feature_layout, dtype=self.decoder.dtype,
                               param_dtype=self.decoder.param_dtype,
                               **{s: getattr(self, f"projector_{s}") for s in connectors.SETTINGS})

    @property
    def image_token_layout(self) -> FeatureLayout:
        """The image tokens per image as the connector emits them: prefix tokens without a grid
        place, then the rest, row-major on `grid` (rows, cols) when the connector keeps one."""
        return connectors.get(self.projector).output_layout(self.projector_config)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image (what each `<image>` marker expands to)."""
        layout = self.image_token_layout
        return layout.num_prefix + layout.num_patches

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of `from_dict`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["vision"], d["decoder"] = self.vision.to_dict(), self.decoder.to_dict()
        if isinstance(self.vision_feature_layer, tuple):
            d["vision_feature_layer"] = list(self.vision_feature_layer)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        """Rebuild from `to_dict()` output."""
        d = dict(d)
        d["vision"] = VisionConfig.from_dict(d["vision"])
        d["decoder"] = DecoderConfig.from_dict(d["decoder"])
        return cls(**d)


def image_layout(input_ids: np.ndarray, image_token_id: int, tokens_per_image: int, num_images: int
                 ) -> np.ndarray | None:
    """Which images of `pixel_values [num_images, ...]` the rows of `input_ids [B, T]` use:
    None when image b belongs to row b (`num_images == B`, no row with more than one image's
    tokens; text-only rows carry an unused image), else `first_image [B]` int32, each row's first
    image when the images are the batch's images in order (transformers' convention).

    Raises ValueError naming the row whose image-token count is not a multiple of
    `tokens_per_image`, or the counts when they ask for another number of images.
    """
    counts = (np.asarray(input_ids) == image_token_id).sum(axis=1)
    for row, count in enumerate(counts):
        if count % tokens_per_image:
            raise ValueError(
                f"input_ids row {row} holds {count} image tokens (id {image_token_id}) but an image gives "
                f"{tokens_per_image} features; expand each image marker to exactly {tokens_per_image} tokens"
            )
    per_row = counts // tokens_per_image
    if num_images == len(counts) and (per_row <= 1).all():
        return None
    if per_row.sum() != num_images:
        raise ValueError(f"input_ids hold the image tokens of {per_row.sum()} images (per row: {per_row.tolist()}) "
                         f"but pixel_values holds {num_images}")
    return (np.cumsum(per_row) - per_row).astype(np.int32)


def merge_image_features(
    embeds: jnp.ndarray, input_ids: jnp.ndarray, features: jnp.ndarray, image_token_id: int,
    first_image: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Write image `features [M,N,D]` into `embeds [B,T,D]` at the image-token positions of
    `input_ids`: the k-th image token of row b receives token k mod N of image
    `first_image[b] + k // N` (image b when `first_image` is None), as Hugging Face's
    `masked_scatter` does (the counts are checked by `image_layout` outside jit)."""
    is_image = input_ids == image_token_id
    k = jnp.cumsum(is_image, axis=1) - 1
    n = features.shape[1]
    if first_image is None:  # row b reads image b: a gather within each row, local to a batch shard
        index = jnp.clip(k, 0, n - 1)
        gathered = jnp.take_along_axis(features, index[..., None], axis=1)
    else:
        image = jnp.clip(first_image[:, None] + k // n, 0, features.shape[0] - 1)
        gathered = features[image, jnp.clip(k, 0, None) % n]
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


class VLM(nnx.Module):
    """LLaVA-1.5 composite. Parts are attributes usable alone: `vision`, `projector` (the
    connector), `decoder`."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision, rngs=rngs)
        self.projector = connectors.build(cfg.projector_config, rngs=rngs)
        self.decoder = Decoder(cfg.decoder, rngs=rngs)

    def image_features(self, pixel_values, *, pixel_attention_mask=None, spatial_shapes=None) -> jnp.ndarray:
        """Projected image features `[M,N,D]` from pixels `[M,H,W,3]` (or NaFlex patches `[M,P,3pp]`):
        the hidden states of `feature_layers`, each selected, concatenated, through the connector."""
        out = self.vision(pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes)
        selected = [out.hidden_states[i] for i in self.cfg.feature_layers]
        if self.cfg.vision_feature_select == "default":
            selected = [h[:, 1:] for h in selected]
        return self.projector(jnp.concatenate(selected, axis=-1) if len(selected) > 1 else selected[0])

    def embed_inputs(
        self, input_ids, pixel_values=None, *, pixel_attention_mask=None, spatial_shapes=None, first_image=None
    ) -> jnp.ndarray:
        """Token embeddings `[B,T,D]` with image features written at the image-token positions
        (`first_image`: see `merge_image_features`)."""
        embeds = self.decoder.embed(input_ids)
        if pixel_values is None:
            return embeds
        features = self.image_features(
            pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes
        )
        return merge_image_features(embeds, input_ids, features, self.cfg.image_token_id, first_image)

    def __call__(
        self,
        input_ids,
        pixel_values=None,
        *,
        attention_mask=None,
        positions=None,
        pixel_attention_mask=None,
        spatial_shapes=None,
        first_image=None,
        cache=None,
        output_hidden_states=True,
        output_logits=True,
    ):
        """Logits for `input_ids [B,T]` and one image per row `pixel_values [B,H,W,3]` (or None;
        NaFlex: patches `[B,P,3pp]` with `pixel_attention_mask`, `spatial_shapes`). With
        `first_image [B]` the images are the batch's images in order instead (module docstring).

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
            input_ids, pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes,
            first_image=first_image,
        )
        return self.decoder(
            embeds, positions=positions, attention_mask=attention_mask, cache=cache,
            output_hidden_states=output_hidden_states, output_logits=output_logits,
        )
