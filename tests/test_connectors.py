"""The connectors (`model.connector`) against PyTorch: 'pool2d' is `avg_pool2d` on the patch grid then
LLaVA's MLP, 'c_abstractor' is Honeybee's C-Abstractor (timm RegStage blocks, `adaptive_avg_pool2d`,
RegStage, MLP readout) read through its HF names, 'resampler' discards the grid (any token order
gives the same output). Every connector's declared layout is what it emits and what a prompt
reserves (`VLMConfig.num_image_tokens`)."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from vlm_spatial.convert import hf_decoder, namemap
from vlm_spatial.models import connectors
from vlm_spatial.models.connectors import FeatureLayout, ProjectorConfig
from vlm_spatial.models.connectors.grid import adaptive_avg_pool2d
from vlm_spatial.models.presets import vlm_config
from vlm_spatial.models.vlm import VLM

DV, D = 16, 24


def _build(kind, features, **settings):
    cfg = ProjectorConfig(kind=kind, vision_dim=DV, text_dim=D, features=features, **settings)
    module = connectors.build(cfg, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    rng = np.random.default_rng(1)
    noisy = jax_tree_map(lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    nnx.update(module, noisy)
    entries = hf_decoder.projector_entries(kind, DV, D, True, **settings)
    hf = {k: torch.from_numpy(np.array(v)) for k, v in namemap.write(entries, noisy)}
    return cfg, module, hf


def jax_tree_map(f, tree):
    return {k: jax_tree_map(f, v) if isinstance(v, dict) else f(v) for k, v in tree.items()}


def _mlp(hf, x, names=("linear_1", "linear_2")):
    a, b = names
    return F.linear(F.gelu(F.linear(x, hf[f"{a}.weight"], hf[f"{a}.bias"])), hf[f"{b}.weight"], hf[f"{b}.bias"])


def _features(prefix, rows, cols, batch=2):
    return np.random.default_rng(2).normal(size=(batch, prefix + rows * cols, DV)).astype(np.float32)


@pytest.mark.parametrize("prefix,rows,cols,k", [(1, 4, 4, 2), (0, 5, 5, 2), (5, 6, 6, 3)])
def test_pool2d_is_avg_pool2d_on_the_patch_grid_then_the_mlp(prefix, rows, cols, k):
    cfg, module, hf = _build("pool2d", FeatureLayout(prefix, rows * cols, (rows, cols)), pool=k)
    x = _features(prefix, rows, cols)
    grid = torch.from_numpy(x[:, prefix:]).reshape(2, rows, cols, DV).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, k).flatten(2).transpose(1, 2)
    with torch.no_grad():
        ref = _mlp(hf, pooled).numpy()
    got = np.asarray(module(jnp.asarray(x)))
    assert connectors.get("pool2d").output_layout(cfg) == FeatureLayout(0, (rows // k) * (cols // k), (rows // k, cols // k))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,out", [((6, 6), (3, 3)), ((5, 7), (3, 2)), ((4, 4), (6, 6)), ((18, 18), (12, 12))])
def test_adaptive_pooling_equals_torch(size, out):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    ref = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool2d(jnp.asarray(x), out)), ref, atol=1e-6, rtol=0)


def _regnet_block(hf, name, x):
    """timm's RegNet Bottleneck (bottle_ratio 1, group_size 1, se_ratio 0.25, SiLU, LayerNorm2d) on
    NCHW `x`, with the weights named as in Honeybee's `net.*` RegStage modules."""
    def conv_norm(y, conv, act, groups=1, pad=0):
        y = F.conv2d(y, hf[f"{name}.{conv}.conv.weight"], padding=pad, groups=groups)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), hf[f"{name}.{conv}.bn.weight"],
                         hf[f"{name}.{conv}.bn.bias"], 1e-6).permute(0, 3, 1, 2)
        return F.silu(y) if act else y

    y = conv_norm(x, "conv1", True)
    y = conv_norm(y, "conv2", True, groups=y.shape[1], pad=1)
    s = F.conv2d(y.mean((2, 3), keepdim=True), hf[f"{name}.se.fc1.weight"], hf[f"{name}.se.fc1.bias"])
    s = F.conv2d(F.silu(s), hf[f"{name}.se.fc2.weight"], hf[f"{name}.se.fc2.bias"])
    y = conv_norm(y * torch.sigmoid(s), "conv3", False)
    return F.silu(y + x)


@pytest.mark.parametrize("prefix,rows,out,depth", [(1, 6, 3, 2), (0, 5, 2, 1)])
def test_c_abstractor_equals_honeybees_module_read_through_its_names(prefix, rows, out, depth):
    cfg, module, hf = _build("c_abstractor", FeatureLayout(prefix, rows * rows, (rows, rows)), grid=out, depth=depth)
    x = _features(prefix, rows, rows)
    with torch.no_grad():
        h = torch.from_numpy(x[:, prefix:]).reshape(2, rows, rows, DV).permute(0, 3, 1, 2)
        for i in range(depth):
            h = _regnet_block(hf, f"net.0.b{i + 1}", h)
        h = F.adaptive_avg_pool2d(h, (out, out))
        for i in range(depth):
            h = _regnet_block(hf, f"net.2.b{i + 1}", h)
        ref = _mlp(hf, h.flatten(2).transpose(1, 2), ("readout.0", "readout.2")).numpy()
    np.testing.assert_allclose(np.asarray(module(jnp.asarray(x))), ref, atol=1e-5, rtol=0)
    assert connectors.get("c_abstractor").output_layout(cfg) == FeatureLayout(0, out * out, (out, out))


def test_resampler_discards_the_grid():
    cfg, module, _ = _build("resampler", FeatureLayout(1, 16, (4, 4)), num_queries=5, depth=2)
    x = _features(1, 4, 4)
    perm = np.random.default_rng(3).permutation(x.shape[1])
    a, b = np.asarray(module(jnp.asarray(x))), np.asarray(module(jnp.asarray(x[:, perm])))
    assert a.shape == (2, 5, D) and np.abs(a[0] - a[1]).max() > 1e-3  # it reads its input ...
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)  # ... but not where each token sits
    assert connectors.get("resampler").output_layout(cfg) == FeatureLayout(0, 5, None)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear", "pool2d", "c_abstractor", "resampler"])
def test_each_connector_emits_the_tokens_a_prompt_reserves(kind):
    base = vlm_config("tiny-clip", "tiny-llama")
    cfg = dataclasses.replace(base, projector=kind, projector_grid=3, projector_num_queries=7, projector_depth=1)
    model = VLM(cfg, rngs=nnx.Rngs(0))
    pix = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    feats = model.image_features(pix)
    layout = cfg.image_token_layout
    assert feats.shape == (2, cfg.num_image_tokens, cfg.decoder.hidden_size)
    assert cfg.num_image_tokens == layout.num_prefix + layout.num_patches
    if layout.grid is not None:
        assert layout.num_patches == layout.grid[0] * layout.grid[1]
    ids = np.full((2, cfg.num_image_tokens + 3), 5, np.int32)
    ids[:, 1:1 + cfg.num_image_tokens] = cfg.image_token_id
    logits = model(jnp.asarray(ids), pix).logits
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("kind", ["pool2d", "c_abstractor"])
def test_grid_connectors_refuse_features_without_a_grid(kind):
    base = vlm_config("tiny-siglip2", "tiny-llama")
    with pytest.raises(ValueError, match=f"connector '{kind}' pools the patch grid.*NaFlex"):
        dataclasses.replace(base, projector=kind)
    with pytest.raises(ValueError, match="pool=9 is larger than the 4x4 patch grid"):
        dataclasses.replace(vlm_config("tiny-clip", "tiny-llama"), projector="pool2d", projector_pool=9)
