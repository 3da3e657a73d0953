"""The registry of connectors (vision features -> decoder embeddings), one module per kind.

    connectors.get("mlp2x_gelu")(ProjectorConfig(...), rngs=rngs)   -> the module
    connectors.get(kind).output_layout(cfg)                          -> the image tokens per image
                                                                        (prefix, count, grid or None)

A connector is a registered `base.Connector` subclass; add a module and its line in the import
list below.
"""
from __future__ import annotations

from vlm_spatial.models.connectors.base import (CONNECTORS, SETTINGS, Connector, FeatureLayout,  # noqa: F401
                                                ProjectorConfig)

# The import list: each module registers its connectors.
from vlm_spatial.models.connectors import mlp, grid, resampler  # noqa: E402,F401,I001


def get(kind: str) -> type[Connector]:
    """The connector class registered as `kind`; ValueError listing the registered ones otherwise."""
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector {kind!r}; registered: {', '.join(CONNECTORS)}")
    return CONNECTORS[kind]


def names() -> tuple[str, ...]:
    """Registered connector names."""
    return tuple(CONNECTORS)


def reads(kind: str) -> tuple[str, ...]:
    """The `ProjectorConfig` settings (`base.SETTINGS`) the connector `kind` reads."""
    return get(kind).reads


def build(cfg: ProjectorConfig, *, rngs) -> Connector:
    """The connector module `cfg.kind` built from `cfg`."""
    return get(cfg.kind)(cfg, rngs=rngs)
