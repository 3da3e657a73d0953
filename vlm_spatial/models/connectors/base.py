"""What a connector is: the module between the encoder's selected features and the decoder.

A connector is an `nnx.Module` class registered under the name `VLMConfig.projector` selects. It
is built from a `ProjectorConfig` and maps features `[B, N, Dv]` (the kept prefix tokens, then
the patch tokens in row-major grid order; `FeatureLayout` says how many of each and the grid) to
`[B, M, D]`. It owns `M` and the layout of its output (`output_layout`: prefix tokens, grid kept
or not), from which `VLMConfig.image_token_layout` - the one function the data pipeline's image
slot count comes from - is built; nothing outside computes it. Its `name_table` maps its parameters to Hugging Face
`multi_modal_projector.*` names (rows as in `families.base`), and `hf_llava` says whether
`LlavaForConditionalGeneration` can run it.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

from flax import nnx

from vlm_spatial.models import layers


class FeatureLayout(NamedTuple):
    """The encoder features a connector receives, per image: `num_prefix` non-patch tokens (CLS,
    registers) kept by the feature selection, then `num_patches` patch tokens; `grid` is the
    `(rows, cols)` patch grid of a fixed-resolution encoder, None for NaFlex (a grid per image,
    padded to `num_patches` slots)."""

    num_prefix: int
    num_patches: int
    grid: tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """kind: a registered connector; vision_dim Dv (features, several layers concatenated),
    text_dim D; act: HF activation name (LLaVA's `projector_hidden_act`); use_bias: HF
    `multimodal_projector_bias`; the settings only some connectors read (`Connector.reads`):
    pool (pool2d's k), grid (c_abstractor's output side), num_queries (resampler), depth
    (c_abstractor's ResNet blocks per stage, resampler's cross-attention blocks); features: the
    `FeatureLayout` it receives (None when only its parameter shapes are wanted); dtype compute,
    param_dtype storage (dtype names)."""

    kind: str = "mlp2x_gelu"
    vision_dim: int = 1024
    text_dim: int = 4096
    act: str = "gelu"
    use_bias: bool = True
    pool: int = 2
    grid: int = 12
    num_queries: int = 64
    depth: int = 3
    features: FeatureLayout | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in CONNECTORS:
            raise ValueError(f"ProjectorConfig.kind={self.kind!r}; registered connectors: {tuple(CONNECTORS)}")
        layers.activation(self.act)
        for name in SETTINGS:
            if getattr(self, name) < 1:
                raise ValueError(f"ProjectorConfig.{name}={getattr(self, name)} must be >= 1")

    def replace(self, **changes) -> "ProjectorConfig":
        return dataclasses.replace(self, **changes)


SETTINGS = ("pool", "grid", "num_queries", "depth")  # the ProjectorConfig fields a connector may read


class Connector(nnx.Module):
    """`Connector(cfg, *, rngs)`; `__call__(features [B, N, Dv]) -> [B, num_tokens, D]`."""

    name: ClassVar[str]
    hf_llava: ClassVar[bool] = False  # LlavaForConditionalGeneration's projector is this connector
    reads: ClassVar[tuple[str, ...]] = ()  # the SETTINGS it reads

    @classmethod
    def output_layout(cls, cfg: ProjectorConfig) -> FeatureLayout:
        """The image tokens it emits per image for `cfg.features`: `num_prefix` tokens without a
        grid place, then `num_patches` tokens, laid out row-major on `grid` (rows, cols) when it
        keeps one (None: no 2D layout, e.g. the resampler's queries). ValueError when it cannot
        take those features (a grid connector without a grid)."""
        raise NotImplementedError

    @classmethod
    def name_table(cls, cfg: ProjectorConfig) -> list[tuple[str, str, str]]:
        """Rows `(our path, HF name under 'multi_modal_projector.', layout)` of its parameters."""
        raise NotImplementedError


CONNECTORS: dict[str, type[Connector]] = {}


def register(cls: type[Connector]) -> type[Connector]:
    """Class decorator: register the connector `cls` under `cls.name`."""
    CONNECTORS[cls.name] = cls
    return cls
