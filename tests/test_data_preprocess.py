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



def _asymmetric(h=24, w=40):
    """An image whose every flip and rotation differs: red left third, a green block top right."""
    arr = np.full((h, w, 3), 200, np.uint8)
    arr[:, : w // 3] = (255, 0, 0)
    arr[: h // 4, -w // 4:] = (0, 255, 0)
    return arr


def test_exif_orientation_is_applied_for_training_and_evaluation(tmp_path):
    """A JPEG stored sideways with EXIF Orientation=6 (display: rotate 90 degrees clockwise) is
    decoded upright by the one decoder that training and the benchmarks use."""
    from vlm_spatial.data.preprocess import load_image
    from vlm_spatial.evaluation.benchmarks.base import Sample

    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(_asymmetric()).save(path, quality=95, exif=exif)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the pixels as written, without the tag
    upright = np.rot90(stored, k=-1)  # what a viewer shows
    assert stored.shape == (24, 40, 3) and upright.shape == (40, 24, 3)
    np.testing.assert_array_equal(np.asarray(load_image(path)), upright)
    np.testing.assert_array_equal(np.asarray(load_image(path.read_bytes())), upright)
    np.testing.assert_array_equal(np.asarray(load_image(load_image(path))), upright)  # applied once
    np.testing.assert_array_equal(np.asarray(Sample("q", "p", None, image=str(path)).load_image()), upright)
    np.testing.assert_array_equal(
        np.asarray(Sample("q", "p", None, image=path.read_bytes(), image_kind="bytes").load_image()), upright)
    cfg = ImageConfig(encoder="clip", image_size=16)
    np.testing.assert_array_equal(preprocess_image(str(path), cfg), preprocess_image(upright.copy(), cfg))


def test_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    from vlm_spatial.data.preprocess import load_image
    from vlm_spatial.evaluation.benchmarks.base import Sample

    values = np.array([[0, 128, 257, 1000], [32896, 40000, 65278, 65535]], np.uint16)
    expected = np.array([[0, 0, 1, 4], [128, 156, 254, 255]], np.uint8)  # round(v / 257)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    got = np.asarray(load_image(path))
    assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, -1))
    np.testing.assert_array_equal(np.asarray(Sample("q", "p", None, image=str(path)).load_image()), got)
    as_i = Image.open(path).convert("I")  # the same values in Pillow's 32-bit integer mode
    assert as_i.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(as_i)), got)
