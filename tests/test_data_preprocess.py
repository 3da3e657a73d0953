"""Image preprocessing equals the Hugging Face (PIL backend) image processors of each encoder."""
import ml_dtypes
import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from vlm_spatial.data.preprocess import ImageConfig, expand_to_square, preprocess_image


@pytest.fixture(scope="module")
def photo():
    """A 500x375 (COCO-like aspect) image with gradients and noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    arr = np.stack([xx * 255 // 499, yy * 255 // 374, (xx + yy) % 256], -1) + rng.integers(0, 40, (375, 500, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_llava_pad_then_clip_processor(photo):
    """LLaVA-1.5 `image_aspect_ratio='pad'`: expand2square with the mean colour, CLIP processor at 336."""
    hf = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    square = expand_to_square(photo, tuple(int(m * 255) for m in hf.image_mean))
    assert square.size == (500, 500) and square.getpixel((0, 0)) == (122, 116, 104)
    ref = hf(square, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = preprocess_image(photo, ImageConfig("clip", 336, "pad"))
    assert ours.shape == (336, 336, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-6)


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_fixed_resize(photo, family):
    """The paper's fixed (aspect-distorting) bicubic resize, here at 256 x 256, per-family norms."""
    hf = SiglipImageProcessorPil(size={"height": 256, "width": 256})
    if family == "clip":
        hf = SiglipImageProcessorPil(size={"height": 256, "width": 256}, image_mean=CLIPImageProcessorPil.image_mean,
                                     image_std=CLIPImageProcessorPil.image_std)
    ref = hf(photo, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = preprocess_image(photo, ImageConfig(family, 256, "resize"))
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    half = preprocess_image(photo, ImageConfig(family, 256, "resize", dtype="bfloat16"))
    assert half.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(half.astype(np.float32), ref, atol=2e-2)


def test_siglip2_naflex(photo):
    hf = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256)
    ref = hf(photo, return_tensors="np")
    ours = preprocess_image(photo, ImageConfig("siglip2", naflex=True, patch_size=16, max_num_patches=256))
    assert ours["spatial_shapes"].tolist() == ref["spatial_shapes"][0].tolist() == [14, 18]  # aspect kept
    np.testing.assert_array_equal(ours["pixel_attention_mask"], ref["pixel_attention_mask"][0])
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"][0], atol=2e-6)

