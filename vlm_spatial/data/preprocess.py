"""Image preprocessing per encoder family.

``ImageConfig(encoder, image_size, resize_mode, ...)`` selects everything:

* the normalisation constants of the encoder family (``image_mean``/``image_std`` of its module in
  ``vlm_spatial.models.families``: OpenAI CLIP's for CLIP and AIMv2, 0.5/0.5 for SigLIP(2), ...);
* the family's native resolution (``native_size``) when ``image_size`` is None;
* ``resize_mode='resize'``: the paper's plain (aspect-distorting) bicubic resize to ``S x S``
  (the paper uses 256 x 256); ``resize_mode='pad'``: LLaVA-1.5's ``expand2square`` — pad the short
  side symmetrically with the mean colour (``int(m * 255)`` per channel), then resize;
* ``naflex=True`` (SigLIP2-NaFlex): keep the aspect ratio, pick the largest size whose
  ``(h/p) * (w/p)`` patch grid fits ``max_num_patches`` (same binary search as Hugging Face's
  ``Siglip2ImageProcessor``), bilinear resize, cut into ``p x p`` patches flattened in
  ``(py, px, C)`` order, zero-pad to ``max_num_patches``.

Outputs (one image): ``preprocess_image`` -> float32 (or bfloat16) ``[S, S, 3]`` NHWC, normalised;
with NaFlex a dict ``pixel_values [P, p*p*3]``, ``pixel_attention_mask int32 [P]``,
``spatial_shapes int32 [2]`` (rows, cols of patches), ``P = max_num_patches``.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("resize", "pad")


def _family(name: str):
    """The registered encoder family `name` (imported on first use: data workers that never
    preprocess need no model code)."""
    from vlm_spatial.models import families

    return families.get(name)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Preprocessing settings. ``image_size=None`` means the family's native resolution."""

    encoder: str = "clip"
    image_size: int | None = None
    resize_mode: str = "resize"
    naflex: bool = False
    patch_size: int = 16
    max_num_patches: int = 256
    dtype: str = "float32"  # or "bfloat16"

    def __post_init__(self):
        _family(self.encoder)  # ValueError naming the registered families
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; one of {RESIZE_MODES}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    @property
    def size(self) -> int:
        return int(self.image_size or _family(self.encoder).native_size)

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(_family(self.encoder).image_mean, np.float32)

    @property
    def std(self) -> np.ndarray:
        return np.asarray(_family(self.encoder).image_std, np.float32)

    @property
    def np_dtype(self):
        if self.dtype == "bfloat16":
            import ml_dtypes

            return ml_dtypes.bfloat16
        return np.float32

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        return cls(**d)


# 16-bit single-channel modes (16-bit grayscale PNG/TIFF decode to one of these; "I" is 32-bit
# int, which Pillow also gives 16-bit PNGs); their 0..65535 range maps onto 0..255 by v / 257.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit single-channel image scaled to 8-bit ``L`` (``round(v / 257)``, so 65535 -> 255);
    Pillow's own ``convert`` clips instead, saturating every value above 255 to white."""
    arr = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")


def load_image(src: Any) -> Image.Image:
    """THE image decoder of training data and evaluation benchmarks: a path, bytes, HWC uint8
    array or PIL image -> a fully decoded RGB PIL image as a viewer shows it.

    The EXIF orientation tag is applied (``ImageOps.exif_transpose``: a phone photo stored
    sideways is turned upright, so left and right are what the viewer sees), and 16-bit
    grayscale (modes :data:`SIXTEEN_BIT_MODES`) is scaled to 8 bits (:func:`_to_8bit`) instead of
    clipped. Raises ``FileNotFoundError`` for a missing file and ``OSError``/``ValueError`` for a
    corrupt one.
    """
    if isinstance(src, np.ndarray):
        return Image.fromarray(src.astype(np.uint8)).convert("RGB")
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (bytes, bytearray)):
        img = Image.open(io.BytesIO(src))
    else:
        img = Image.open(os.fspath(src))
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES:
        img = _to_8bit(img)
    return img.convert("RGB")


def expand_to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's ``expand2square``: pad the short side (centred) with ``background``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _normalise(arr_uint8: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    scale = (1.0 / (255.0 * cfg.std)).astype(np.float32)
    shift = (cfg.mean / cfg.std).astype(np.float32)
    out = arr_uint8.astype(np.float32)
    out *= scale  # in place: no float temporaries of the image size
    out -= shift
    return out.astype(cfg.np_dtype, copy=False)


def naflex_target_size(height: int, width: int, patch_size: int, max_num_patches: int,
                       eps: float = 1e-5) -> tuple[int, int]:
    """(H', W'), multiples of ``patch_size``, aspect ratio kept, ``H'W'/p^2 <= max_num_patches``."""

    def scaled(scale, size):
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        n = (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size)
        if n <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


def naflex_patchify(img: Image.Image, cfg: ImageConfig) -> dict[str, np.ndarray]:
    """SigLIP2-NaFlex inputs for one image: ``pixel_values [P, p*p*3]`` ((py, px, C) order),
    ``pixel_attention_mask int32 [P]``, ``spatial_shapes int32 [2]``; ``P = max_num_patches``."""
    p = cfg.patch_size
    h, w = naflex_target_size(img.height, img.width, p, cfg.max_num_patches)
    arr = np.asarray(img.resize((w, h), Image.BILINEAR))
    x = _normalise(arr, cfg)
    nh, nw = h // p, w // p
    patches = x.reshape(nh, p, nw, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * nw, p * p * 3)
    out = np.zeros((cfg.max_num_patches, p * p * 3), cfg.np_dtype)
    out[: nh * nw] = patches
    mask = np.zeros(cfg.max_num_patches, np.int32)
    mask[: nh * nw] = 1
    return {"pixel_values": out, "pixel_attention_mask": mask,
            "spatial_shapes": np.asarray([nh, nw], np.int32)}


def preprocess_image(src: Any, cfg: ImageConfig):
    """One image (path / bytes / uint8 HWC array / PIL image) -> model input.

    Returns float32 (or bfloat16) ``[S, S, 3]`` normalised NHWC pixels, or with ``cfg.naflex`` the
    dict of :func:`naflex_patchify`.
    """
    img = load_image(src)
    if cfg.naflex:
        return naflex_patchify(img, cfg)
    if cfg.resize_mode == "pad":
        img = expand_to_square(img, tuple(int(m * 255) for m in _family(cfg.encoder).image_mean))
    s = cfg.size
    if img.size != (s, s):
        img = img.resize((s, s), Image.BICUBIC)
    return _normalise(np.asarray(img), cfg)


def blank_image(cfg: ImageConfig):
    """The all-zero input of a text-only row (same shapes/dtypes as :func:`preprocess_image`).

    Like LLaVA's zero image it is a valid image, so the encoder's (unused) features stay finite:
    with NaFlex a square ``s x s`` patch grid, ``s = floor(sqrt(max_num_patches))``, never a 0 x 0 one.
    """
    if cfg.naflex:
        p, side = cfg.patch_size, math.isqrt(cfg.max_num_patches)
        mask = np.zeros(cfg.max_num_patches, np.int32)
        mask[: side * side] = 1
        return {"pixel_values": np.zeros((cfg.max_num_patches, p * p * 3), cfg.np_dtype),
                "pixel_attention_mask": mask, "spatial_shapes": np.asarray([side, side], np.int32)}
    return np.zeros((cfg.size, cfg.size, 3), cfg.np_dtype)
