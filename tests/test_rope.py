"""Pure rotary functions: 2D-RoPE scores depend only on relative (row, col); 1D tables match HF."""
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from vlm_spatial.models import rope


def _scores_2d(height, width, head_dim, theta, seed=0):
    """Scores `[N, N]` between one fixed q and one fixed k rotated to every grid cell."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(head_dim).astype(np.float32)
    k = rng.standard_normal(head_dim).astype(np.float32)
    rows, cols = rope.grid_positions(height, width)
    cos, sin = rope.rope2d_table(rows, cols, head_dim, theta)
    n = height * width
    qr = np.asarray(rope.apply_rope(np.broadcast_to(q, (1, n, 1, head_dim)), cos, sin))[0, :, 0]
    kr = np.asarray(rope.apply_rope(np.broadcast_to(k, (1, n, 1, head_dim)), cos, sin))[0, :, 0]
    return qr @ kr.T, np.asarray(rows[0]), np.asarray(cols[0])


def test_2d_scores_depend_only_on_relative_offset():
    scores, rows, cols = _scores_2d(height=5, width=6, head_dim=16, theta=100.0)
    by_offset: dict[tuple, list[float]] = {}
    for i in range(len(rows)):
        for j in range(len(rows)):
            by_offset.setdefault((rows[i] - rows[j], cols[i] - cols[j]), []).append(scores[i, j])
    for offset, values in by_offset.items():
        np.testing.assert_allclose(values, values[0], atol=1e-4, err_msg=str(offset))
    # ... and they do depend on both components of the offset, not on one axis only.
    assert abs(by_offset[(0, 0)][0] - by_offset[(2, 0)][0]) > 1e-3
    assert abs(by_offset[(0, 0)][0] - by_offset[(0, 2)][0]) > 1e-3
    assert abs(by_offset[(1, 2)][0] - by_offset[(2, 1)][0]) > 1e-3


def test_2d_table_rotates_row_pairs_by_row_and_col_pairs_by_col():
    rows, cols = np.array([[3]]), np.array([[7]])
    cos, _ = rope.rope2d_table(rows, cols, head_dim=8, theta=10.0)
    inv = 1.0 / 10.0 ** (np.arange(0, 4, 2) / 4)
    np.testing.assert_allclose(np.asarray(cos[0, 0]), np.cos(np.concatenate([3 * inv, 7 * inv] * 2)), rtol=1e-6)


def test_identity_prefix_leaves_cls_unrotated():
    rows, cols = rope.grid_positions(2, 2)
    cos, sin = rope.with_identity_prefix(*rope.rope2d_table(rows, cols, 8, 10.0), num_prefix=1)
    x = np.random.default_rng(0).standard_normal((1, 5, 2, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(rope.apply_rope(x, cos, sin))[:, 0], x[:, 0])


def test_naflex_positions_are_row_major_per_image_with_padding_at_origin():
    rows, cols = rope.naflex_grid_positions(np.array([[2, 3], [1, 2]]), max_patches=7)
    np.testing.assert_array_equal(np.asarray(rows), [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(cols), [[0, 1, 2, 0, 1, 2, 0], [0, 1, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_1d_frequencies_and_rotation_match_transformers(scaling):
    head_dim, theta = 16, 500000.0
    params = {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling, "rope_theta": theta}
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                                   rope_parameters=params)
    if scaling is None:  # transformers keeps the default init on the model class; it is the plain formula
        ref_inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    else:
        ref_inv, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    ours = np.asarray(rope.inverse_frequencies(head_dim, theta, scaling))
    np.testing.assert_allclose(ours, ref_inv.numpy(), rtol=1e-6)

    positions = np.array([[0, 5, 17, 200]])
    cos, sin = rope.rope_table(positions, ours)
    x = np.random.default_rng(1).standard_normal((1, 4, 2, head_dim)).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 2, 1, 3).copy())
    ref, _ = apply_rotary_pos_emb(t, t, torch.tensor(np.asarray(cos)), torch.tensor(np.asarray(sin)))
    np.testing.assert_allclose(np.asarray(rope.apply_rope(x, cos, sin)), ref.numpy().transpose(0, 2, 1, 3), atol=1e-6)
