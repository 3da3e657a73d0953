"""Batched generation with a KV cache, and option scoring by log-likelihood.

Prompts are left-padded to the smallest of a few bucket lengths, so one benchmark compiles a
handful of programs; prefill and the whole decode loop run inside one jitted function (a
`lax.while_loop` that stops when every row has produced EOS or `max_new_tokens` are out). The
model may be sharded on a mesh: jit follows the shardings of its parameters.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models.vlm import VLM

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= n (n itself if it exceeds every bucket)."""
    return next((b for b in sorted(buckets) if b >= n), n)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, buckets: Sequence[int] = DEFAULT_BUCKETS):
    """Left-pad token lists to one bucket length: returns `(ids [B,T] int32, mask [B,T] int32)`."""
    t = bucket_length(max(len(s) for s in sequences), buckets)
    ids = np.full((len(sequences), t), pad_id, np.int32)
    mask = np.zeros((len(sequences), t), np.int32)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, t - len(seq):] = seq
            mask[row, t - len(seq):] = 1
    return ids, mask


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "eos_token_id", "temperature"))
def _generate(model: VLM, input_ids, attention_mask, pixel_values, rng, *, max_new_tokens, eos_token_id, temperature):
    b, t = input_ids.shape
    cache = model.decoder.init_cache(b, t + max_new_tokens)
    out = model(input_ids, pixel_values, attention_mask=attention_mask, cache=cache)
    positions = jnp.sum(attention_mask, axis=1).astype(jnp.int32)  # next position per row

    def pick(logits, key):
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

    rng, key = jax.random.split(rng)
    first = pick(out.logits[:, -1], key)
    tokens = jnp.full((b, max_new_tokens), eos_token_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_token_id

    def cond(state):
        step, _, _, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, tokens, cache, done, positions, rng = state
        prev = tokens[:, step - 1]
        embeds = model.decoder.embed(prev[:, None])
        res = model.decoder(
            embeds, positions=positions[:, None], cache=cache, output_hidden_states=False
        )
        rng, key = jax.random.split(rng)
        nxt = jnp.where(done, eos_token_id, pick(res.logits[:, -1], key))
        tokens = tokens.at[:, step].set(nxt)
        return step + 1, tokens, res.cache, done | (nxt == eos_token_id), positions + 1, rng

    state = (jnp.int32(1), tokens, out.cache, done, positions, rng)
    return jax.lax.while_loop(cond, body, state)[1]


def generate_tokens(
    model: VLM,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    pixel_values: np.ndarray | None,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """New tokens `[B, max_new_tokens]` for left-padded prompts `input_ids [B,T]`.

    `attention_mask [B,T]` marks real tokens; `pixel_values [B,H,W,3]` one image per row (or None
    for text-only). Greedy when `temperature == 0`, else sampled. After a row's EOS it is filled
    with EOS.
    """
    return np.asarray(
        _generate(
            model, jnp.asarray(input_ids), jnp.asarray(attention_mask),
            None if pixel_values is None else jnp.asarray(pixel_values), jax.random.PRNGKey(seed),
            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, temperature=float(temperature),
        )
    )


def truncate(tokens: Sequence[int], eos_token_id: int) -> list[int]:
    """The tokens before the first EOS."""
    tokens = list(tokens)
    return tokens[: tokens.index(eos_token_id)] if eos_token_id in tokens else tokens


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the earliest of `stop_strings` (unchanged if none occurs)."""
    cut = min((text.find(s) for s in stop_strings if s and s in text), default=len(text))
    return text[:cut]


@nnx.jit
def _sequence_logprobs(model: VLM, input_ids, attention_mask, target_mask, pixel_values):
    logits = model(input_ids, pixel_values, attention_mask=attention_mask).logits
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * target_mask[:, 1:], axis=1)


def score_options(
    model: VLM,
    prompt_ids: Sequence[Sequence[int]],
    option_ids: Sequence[Sequence[Sequence[int]]],
    pixel_values: np.ndarray | None,
    *,
    pad_id: int,
) -> list[list[float]]:
    """Log-likelihood of each option's tokens after its prompt, `[B][num_options]`.

    `prompt_ids[b]` the prompt tokens of row b (image tokens included), `option_ids[b][j]` the
    tokens of option j; `pixel_values [B,H,W,3]` one image per prompt or None. Sequences are
    right-padded to one bucket; the image of row b is repeated for each of its options.
    """
    rows, images, targets = [], [], []
    for b, (prompt, options) in enumerate(zip(prompt_ids, option_ids)):
        for option in options:
            rows.append(list(prompt) + list(option))
            targets.append([0] * len(prompt) + [1] * len(option))
            images.append(b)
    t = bucket_length(max(len(r) for r in rows))
    ids = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    target = np.zeros((len(rows), t), np.float32)
    for i, (r, tg) in enumerate(zip(rows, targets)):
        ids[i, : len(r)], mask[i, : len(r)], target[i, : len(r)] = r, 1, tg
    pixels = None if pixel_values is None else jnp.asarray(np.asarray(pixel_values)[images])
    scores = np.asarray(_sequence_logprobs(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(target), pixels))
    out, i = [], 0
    for options in option_ids:
        out.append([float(s) for s in scores[i : i + len(options)]])
        i += len(options)
    return out
