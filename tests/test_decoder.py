"""Decoder LM and projector: parity with Hugging Face (LLaMA with GQA, Qwen2 with tied embeddings
and q/k/v bias, rope scaling), the KV cache against full recomputation, name maps, remat."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm_spatial.convert import hf_decoder as H
from vlm_spatial.models.decoder import (
    DECODER_PRESETS,
    Decoder,
    DecoderConfig,
    KVCache,
    positions_from_mask,
)
from vlm_spatial.models.connectors import ProjectorConfig
from vlm_spatial.models.connectors import build as Projector

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)
HF_CASES = {
    "llama": ("llama", dict(rms_norm_eps=1e-5)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1e6)),
    "llama3": ("llama", dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=64))),
    "linear": ("llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
}


def _randomise(model):
    """Random weights everywhere, norms around 1, so that biases and norm scales matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """case -> (directory written by save_pretrained, HF model in eval mode)."""
    made = {}

    def make(case):
        if case not in made:
            family, extra = HF_CASES[case]
            if family == "llama":
                cfg = transformers.LlamaConfig(**TINY, **extra)
                model = transformers.LlamaForCausalLM(cfg)
            else:
                cfg = transformers.Qwen2Config(**TINY, **extra)
                model = transformers.Qwen2ForCausalLM(cfg)
            model.config._attn_implementation = "eager"
            _randomise(model)
            model.eval()
            path = tmp_path_factory.mktemp(case)
            model.save_pretrained(path)
            made[case] = (str(path), model)
        return made[case]

    return make


def _batch(pad_side: str | None, vocab: int, b=3, t=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    if pad_side is not None:
        for row, n in enumerate([t, t - 3, t - 5][:b]):
            if pad_side == "left":
                mask[row, : t - n] = 0
            else:
                mask[row, n:] = 0
    return ids, mask


@pytest.mark.parametrize(
    "case,pad_side",
    [("llama", "left"), ("llama", "right"), ("qwen2", "left"), ("qwen2", None), ("llama3", "left"), ("linear", None)],
)
def test_hf_parity(hf_dir, case, pad_side):
    path, hf = hf_dir(case)
    cfg, model = H.load_hf_causal_lm(path)
    assert cfg.family == HF_CASES[case][0]
    if case == "qwen2":
        assert cfg.tie_word_embeddings and cfg.qkv_bias and not hasattr(model, "lm_head")
    ids, mask = _batch(pad_side, cfg.vocab_size)
    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(pos).long(), output_hidden_states=True,
        )
    out = model(
        model.embed(jnp.asarray(ids)), positions=jnp.asarray(pos),
        attention_mask=None if pad_side is None else jnp.asarray(mask),
    )
    assert out.logits.dtype == jnp.float32
    assert out.hidden_states.shape == (cfg.num_layers + 1, *ids.shape, cfg.hidden_size)
    real = mask.astype(bool)  # padding positions are not comparable (HF rows of -inf)
    for i, h_ref in enumerate(ref.hidden_states):
        np.testing.assert_allclose(
            np.asarray(out.hidden_states[i])[real], h_ref.numpy()[real], atol=1e-4, rtol=0,
            err_msg=f"hidden_states[{i}]",
        )
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref.logits.numpy()[real], atol=1e-4, rtol=0)
    assert np.isfinite(np.asarray(out.logits)).all()


def test_rope_scaling_is_read(hf_dir):
    cfg, _ = H.load_hf_causal_lm(hf_dir("llama3")[0])
    assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
    assert cfg.rope_scaling_dict["original_max_position_embeddings"] == 64
    assert DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _jitted(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def full(state, ids, pos, mask):
        m = nnx.merge(graphdef, state)
        return m(m.embed(ids), positions=pos, attention_mask=mask, output_hidden_states=False).logits

    @jax.jit
    def step(state, ids, pos, mask, cache):
        m = nnx.merge(graphdef, state)
        out = m(m.embed(ids), positions=pos, attention_mask=mask, cache=cache, output_hidden_states=False)
        return out.logits[:, -1], out.cache

    return state, full, step


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_kv_cache_greedy_matches_recompute(preset):
    cfg = DECODER_PRESETS[preset]
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    # larger weights than the 0.02 init so the greedy choice is well separated
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 8.0 if x.ndim > 2 else x, state))
    lengths, new = [6, 3, 5], 5
    t0 = max(lengths)
    ids, mask = np.zeros((3, t0), np.int32), np.zeros((3, t0), np.int32)
    rng = np.random.default_rng(0)
    for r, n in enumerate(lengths):  # left padding
        ids[r, t0 - n:] = rng.integers(1, cfg.vocab_size, n)
        mask[r, t0 - n:] = 1
    state, full, step = _jitted(model)

    # with the cache: prefill, then one token at a time
    cache = model.init_cache(3, t0 + new)
    assert isinstance(cache, KVCache) and cache.k.shape == (cfg.num_layers, 3, t0 + new, cfg.num_kv_heads, cfg.head_dim)
    pos = positions_from_mask(jnp.asarray(mask))
    logits, cache = step(state, jnp.asarray(ids), pos, jnp.asarray(mask), cache)
    cached_tokens, cached_logits = [], []
    last = pos[:, -1]
    for i in range(new):
        cached_logits.append(np.asarray(logits))
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        cached_tokens.append(np.asarray(tok))
        if i + 1 < new:
            last = last + 1
            logits, cache = step(state, tok[:, None], last[:, None], jnp.ones((3, 1), jnp.int32), cache)
    assert int(cache.index) == t0 + new - 1

    # without the cache: the whole sequence every step (right-padded to one static length)
    seq = np.zeros((3, t0 + new), np.int32)
    seq_mask = np.zeros((3, t0 + new), np.int32)
    seq[:, :t0], seq_mask[:, :t0] = ids, mask
    for i in range(new):
        cur = t0 + i
        lg = full(state, jnp.asarray(seq), positions_from_mask(jnp.asarray(seq_mask)), jnp.asarray(seq_mask))
        lg = np.asarray(lg[:, cur - 1])
        tok = lg.argmax(-1)
        np.testing.assert_array_equal(tok, cached_tokens[i], err_msg=f"step {i}")
        np.testing.assert_allclose(cached_logits[i], lg, atol=1e-5, rtol=0, err_msg=f"step {i}")
        seq[:, cur], seq_mask[:, cur] = tok, 1
    # the generated tokens are not all the same (the test would be weak otherwise)
    assert len({tuple(t) for t in cached_tokens}) > 1


@pytest.mark.parametrize("use_bias", [True, False])
def test_projector_parity(use_bias):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    hf_cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(**TINY), multimodal_projector_bias=use_bias,
    )
    torch.manual_seed(0)
    proj = LlavaMultiModalProjector(hf_cfg).eval()
    sd = {k: v.numpy() for k, v in proj.state_dict().items()}
    pcfg = H.projector_config_from_hf(hf_cfg.to_dict())
    assert (pcfg.vision_dim, pcfg.text_dim, pcfg.use_bias) == (24, 32, use_bias)
    params = H.projector_params_from_hf(sd.__getitem__, "mlp2x_gelu", use_bias=use_bias)
    ours = Projector(pcfg, rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(ours))) == jax.tree.map(np.shape, params)
    nnx.update(ours, params)
    x = np.random.default_rng(0).normal(size=(2, 5, 24)).astype(np.float32)
    with torch.no_grad():
        ref = proj(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), ref, atol=1e-5, rtol=0)
    back = H.projector_params_to_hf(params, "mlp2x_gelu")
    assert back.keys() == sd.keys() and all(np.array_equal(back[k], sd[k]) for k in sd)


def test_projector_linear_kind():
    lin = torch.nn.Linear(24, 32)
    sd = {"linear_1.weight": lin.weight.detach().numpy(), "linear_1.bias": lin.bias.detach().numpy()}
    params = H.projector_params_from_hf(sd.__getitem__, "linear")
    ours = Projector(ProjectorConfig(kind="linear", vision_dim=24, text_dim=32), rngs=nnx.Rngs(0))
    nnx.update(ours, params)
    x = np.random.default_rng(1).normal(size=(2, 3, 24)).astype(np.float32)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), ref, atol=1e-5, rtol=0)
    assert H.projector_params_to_hf(params, "linear").keys() == sd.keys()


@pytest.mark.parametrize("case", ["llama", "qwen2"])
def test_name_maps_round_trip(hf_dir, case):
    path, hf = hf_dir(case)
    cfg = H.config_from_hf(json.load(open(f"{path}/config.json")))
    sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight")
    assert H.expected_hf_shapes(cfg) == {k: tuple(v.shape) for k, v in sd.items()}
    params = H.params_from_hf(sd.__getitem__, cfg)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    assert jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(abstract))) == jax.tree.map(
        lambda x: x.shape, params
    )
    back = H.params_to_hf(params, cfg)
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_misshaped_tensor_is_named():
    cfg = DECODER_PRESETS["tiny-llama"]
    sd = {k: np.zeros(s, np.float32) for k, s in H.expected_hf_shapes(cfg).items()}
    bad = "model.layers.1.self_attn.k_proj.weight"
    sd[bad] = np.zeros((3, 32), np.float32)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*expected shape \(16, 32\), got \(3, 32\)"):
        H.params_from_hf(sd.__getitem__, cfg)


def test_config_from_hf_errors_and_legacy_keys():
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"'mistral'.*llama.*qwen2"):
        H.config_from_hf(dict(base, model_type="mistral"))
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        H.config_from_hf(dict(base, model_type="llama", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}))
    old = H.config_from_hf(dict(base, model_type="llama", rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    assert old.rope_theta == 5e5 and old.rope_scaling == (("factor", 2.0), ("rope_type", "linear"))
    plain = H.config_from_hf(dict(base, model_type="qwen2", rope_theta=1e6), dtype="bfloat16")
    assert plain.rope_scaling is None and plain.qkv_bias and plain.dtype == "bfloat16"
    for name, cfg in DECODER_PRESETS.items():
        hash(cfg)
        assert DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name


def test_remat_full_matches_none():
    cfg = DECODER_PRESETS["tiny-qwen2"]
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    mask = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1]], jnp.int32)
    pos = positions_from_mask(mask)
    results = {}
    for policy in ("none", "full"):
        model = Decoder(cfg.replace(remat_policy=policy), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params):
            m = nnx.merge(graphdef, params)
            logits = m(m.embed(ids), positions=pos, attention_mask=mask, output_hidden_states=False).logits
            logp = jax.nn.log_softmax(logits[:, :-1])
            nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
            return (nll * mask[:, 1:]).sum() / mask[:, 1:].sum(), logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results[policy] = (value, logits, nnx.to_pure_dict(grads))
    (v0, l0, g0), (v1, l1, g1) = results["none"], results["full"]
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    np.testing.assert_allclose(l0, l1, atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g0, g1)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g0))


def test_load_bf16_checkpoint(tmp_path):
    """Qwen2 checkpoints are bfloat16 on disk: read through safetensors.numpy, upcast exactly."""
    cfg = transformers.Qwen2Config(**TINY, tie_word_embeddings=True)
    hf = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    ours, model = H.load_hf_causal_lm(str(tmp_path), param_dtype="float32")
    got = H.params_to_hf(nnx.to_pure_dict(nnx.state(model)), ours)
    for k, v in hf.state_dict().items():
        if k in got:
            np.testing.assert_array_equal(got[k], v.float().numpy(), err_msg=k)
