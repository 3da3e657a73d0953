"""Batched generation with a KV cache, and option scoring by log-likelihood.

Prompts are grouped by their own bucket length (the smallest of a few that holds the prompt)
into programs of a fixed `DECODE_ROWS` rows (`fixed_shape_groups`), left-padded to the bucket,
so one benchmark compiles a handful of programs (one per bucket in use) and a prompt's greedy
answer does not depend on the batch size or on the other prompts of its batch. XLA picks its
kernels by shape: with the whole batch padded to its longest prompt's bucket and to a power-of-two
row count, bf16 answers moved with the batch size (tests/test_generate.py::
test_whole_batch_padding_moved_bf16_answers). Prefill and the whole decode loop run inside one
jitted function: the image encoder runs once, in the prefill, then a `lax.while_loop` feeds one
token per step through the decoder's KV cache and stops when every row has produced EOS or a stop
sequence, or `max_new_tokens` are out.

Sharding: with a `mesh` (the training mesh, axes data/fsdp/tensor) the batch is sharded over
data x fsdp (`parallel.shard_batch`), the KV cache likewise (kv heads over tensor where they
divide), and the params keep the shardings they were placed with (`parallel.param_shardings`);
jit follows them.

Images are passed as the model batch's image fields (see CONTRIBUTING.md): `{"pixel_values"
[B,H,W,3]}`, or for SigLIP2-NaFlex `{"pixel_values" [B,P,3pp], "pixel_attention_mask" [B,P],
"spatial_shapes" [B,2]}`; rows without an image carry zeros and no image tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from vlm_spatial import parallel
from vlm_spatial.models.decoder import KVCache
from vlm_spatial.models.vlm import VLM

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DECODE_ROWS = 8  # rows of every generation / option-scoring program, whatever the batch size


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to decode. A program is compiled per `max_new_tokens`, per greedy-or-sampled and per
    set of `stop_sequences`; other values reuse it.

    `temperature == 0` is greedy; otherwise tokens are sampled from `softmax(logits / temperature)`
    restricted to the smallest set of tokens whose probability reaches `top_p` (nucleus).
    `stop_sequences` are token-id sequences that end a row when its newest tokens equal one of
    them (the caller still cuts the decoded text at the stop string; see `cut_at_stop`).
    """

    max_new_tokens: int
    eos_token_id: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"DecodeConfig.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"DecodeConfig.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"DecodeConfig.top_p={self.top_p} must be in (0, 1]")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("DecodeConfig.stop_sequences holds an empty sequence")


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= n (n itself if it exceeds every bucket)."""
    return next((b for b in sorted(buckets) if b >= n), n)


def program_rows(multiple: int = 1) -> int:
    """Rows of every program: `DECODE_ROWS` rounded up to `multiple` (the mesh's batch shards)."""
    return -(-DECODE_ROWS // multiple) * multiple


def fixed_shape_groups(lengths: Sequence[int], rows: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
                       kinds: Sequence | None = None) -> list[list[int]]:
    """Indices of prompts of token `lengths`, grouped so that every program has the same shape
    whatever the batch: prompts of one bucket length (and one of `kinds`, e.g. with / without an
    image) together, at most `rows` per group, in input order within a group; groups ordered by
    (kind, bucket) as first seen. Pad each group to its bucket and to `rows` rows (`left_pad`)."""
    groups: dict = {}
    for i, n in enumerate(lengths):
        key = (None if kinds is None else kinds[i], bucket_length(n, buckets))
        groups.setdefault(key, []).append(i)
    return [idx[k:k + rows] for idx in groups.values() for k in range(0, len(idx), rows)]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
             rows: int | None = None):
    """Left-pad token lists to one bucket length.

    Returns `(ids [R,T] int32, mask [R,T] int32)` with `R = rows or len(sequences)`; rows past
    `len(sequences)` are all padding (mask 0).
    """
    rows = len(sequences) if rows is None else rows
    if rows < len(sequences):
        raise ValueError(f"left_pad: rows={rows} < {len(sequences)} sequences")
    t = bucket_length(max(len(s) for s in sequences), buckets)
    ids = np.full((rows, t), pad_id, np.int32)
    mask = np.zeros((rows, t), np.int32)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, t - len(seq):] = seq
            mask[row, t - len(seq):] = 1
    return ids, mask


def _pick(logits, key, greedy: bool, temperature, top_p):
    """Next token `[B]` int32 from float32 `logits [B,V]`: argmax, or a nucleus sample."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the most likely token always stays
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _hit_stop(tokens, step, stop_sequences):
    """Whether each row's tokens ending at index `step` equal one of `stop_sequences` -> `[B]` bool."""
    hit = jnp.zeros(tokens.shape[0], bool)
    for seq in stop_sequences:
        n = len(seq)
        start = jnp.maximum(step - n + 1, 0)
        tail = jax.lax.dynamic_slice_in_dim(tokens, start, n, axis=1)
        hit |= (step + 1 >= n) & jnp.all(tail == jnp.asarray(seq, jnp.int32)[None], axis=1)
    return hit


def _constrain_cache(cache: KVCache, mesh: Mesh | None) -> KVCache:
    """Shard the cache's batch dim over data x fsdp (and kv heads over tensor where they divide)."""
    if mesh is None:
        return cache

    def put(x, names):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, parallel.logical_to_spec(names, x.shape, mesh)))

    kv_names = ("layers", "batch", None, "kv", None)
    return cache.replace(k=put(cache.k, kv_names), v=put(cache.v, kv_names), valid=put(cache.valid, ("batch", None)))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "stop_sequences", "mesh"))
def _generate(graphdef, state, input_ids, attention_mask, images, rng, eos, temperature, top_p, *,
              max_new_tokens, greedy, stop_sequences, mesh):
    """The jitted loop. Static: what changes the program (lengths, greedy or not, stop sequences,
    mesh); traced: eos id, temperature, top_p, so changing them reuses the compiled program."""
    model: VLM = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    n = max_new_tokens
    cache = _constrain_cache(model.decoder.init_cache(b, t + n), mesh)
    out = model(input_ids, attention_mask=attention_mask, cache=cache, **images)  # vision runs here only
    positions = jnp.sum(attention_mask, axis=1).astype(jnp.int32)  # next rotary position per row

    rng, key = jax.random.split(rng)
    first = _pick(out.logits[:, -1], key, greedy, temperature, top_p)
    tokens = jnp.full((b, n), eos, jnp.int32).at[:, 0].set(first)
    done = (first == eos) | _hit_stop(tokens, 0, stop_sequences)

    def cond(state):
        step, _, _, done, _, _, _ = state
        return (step < n) & ~jnp.all(done)

    decoder_def, decoder_params = nnx.split(model.decoder)

    def body(state):
        step, tokens, cache, done, positions, rng, params = state
        decoder = nnx.merge(decoder_def, params)  # the loop's own trace level (NNX needs it for its scan)
        embeds = decoder.embed(tokens[:, step - 1][:, None])
        res = decoder(embeds, positions=positions[:, None], cache=cache, output_hidden_states=False)
        rng, key = jax.random.split(rng)
        nxt = jnp.where(done, eos, _pick(res.logits[:, -1], key, greedy, temperature, top_p))
        tokens = tokens.at[:, step].set(nxt)
        done = done | (nxt == eos) | _hit_stop(tokens, step, stop_sequences)
        return step + 1, tokens, _constrain_cache(res.cache, mesh), done, positions + 1, rng, params

    state0 = (jnp.int32(1), tokens, out.cache, done, positions, rng, decoder_params)
    return jax.lax.while_loop(cond, body, state0)[1]


def compiled_programs() -> int:
    """How many programs the generation loop has compiled so far in this process."""
    return _generate._cache_size()


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])


def generate_tokens(
    model: VLM,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    images: Mapping[str, np.ndarray] | None,
    decode: DecodeConfig,
    *,
    seed: int = 0,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """New tokens `[B, max_new_tokens]` int32 for left-padded prompts `input_ids [B,T]`.

    `attention_mask [B,T]` marks real tokens; `images` the image fields of the batch (module
    docstring) or None for text-only batches. After a row has finished (EOS or a stop sequence)
    the rest of it is EOS. With `mesh`, rows are padded to a multiple of its batch shards and
    the batch is sharded over them; the result is the same as unsharded. On several hosts every
    process passes the same whole batch and gets all of the tokens back.
    """
    b = input_ids.shape[0]
    batch = {"input_ids": np.asarray(input_ids, np.int32), "attention_mask": np.asarray(attention_mask, np.int32)}
    batch.update({k: np.asarray(v) for k, v in (images or {}).items()})
    if mesh is not None:
        rows = -(-b // parallel.batch_divisor(mesh)) * parallel.batch_divisor(mesh)
        batch = {k: _global_array(_pad_rows(v, rows), mesh) for k, v in batch.items()}
    else:
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
    graphdef, state = nnx.split(model)
    tokens = _generate(
        graphdef, state, ids, mask, batch, jax.random.PRNGKey(seed), jnp.int32(decode.eos_token_id),
        jnp.float32(max(decode.temperature, 1e-6)), jnp.float32(decode.top_p),
        max_new_tokens=decode.max_new_tokens, greedy=decode.temperature == 0.0,
        stop_sequences=decode.stop_sequences, mesh=mesh,
    )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tokens = multihost_utils.process_allgather(tokens, tiled=True)
    return np.asarray(tokens)[:b]


def _global_array(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """`x` (the same whole batch on every process) as one array sharded over the mesh's batch shards."""
    sharding = NamedSharding(mesh, parallel.batch_spec(x.ndim))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def truncate(tokens: Sequence[int], eos_token_id: int) -> list[int]:
    """The tokens before the first EOS."""
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos_token_id)] if eos_token_id in tokens else tokens


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the earliest of `stop_strings` (unchanged if none occurs)."""
    cut = min((text.find(s) for s in stop_strings if s and s in text), default=len(text))
    return text[:cut]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_logprobs(graphdef, state, input_ids, attention_mask, target_mask, images):
    model: VLM = nnx.merge(graphdef, state)
    logits = model(input_ids, attention_mask=attention_mask, **images).logits
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * target_mask[:, 1:], axis=1)


def score_options(
    model: VLM,
    prompt_ids: Sequence[Sequence[int]],
    option_ids: Sequence[Sequence[Sequence[int]]],
    images: Mapping[str, np.ndarray] | None,
    *,
    pad_id: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> list[list[float]]:
    """Log-likelihood of each option's tokens after its prompt, `[B][num_options]` floats.

    `prompt_ids[b]` the prompt tokens of row b (image slots included), `option_ids[b][j]` the
    tokens of option j; `images` the image fields of the B prompts (module docstring) or None.
    Every (prompt, option) pair is one right-padded row; rows are scored in programs of
    `DECODE_ROWS` rows and one bucket length each (`fixed_shape_groups`), so a score does not
    depend on the other questions of the batch. The image of prompt b is repeated for each of its
    options. Multiple choice then answers `argmax_j`.
    """
    rows, owner, targets = [], [], []
    for b, (prompt, options) in enumerate(zip(prompt_ids, option_ids)):
        for option in options:
            if not len(option):
                raise ValueError(f"score_options: prompt {b} has an empty option")
            rows.append(list(prompt) + list(option))
            targets.append([0] * len(prompt) + [1] * len(option))
            owner.append(b)
    graphdef, state = nnx.split(model)
    scores = np.zeros(len(rows), np.float32)
    for group in fixed_shape_groups([len(r) for r in rows], DECODE_ROWS, buckets):
        t = bucket_length(len(rows[group[0]]), buckets)
        ids = np.full((DECODE_ROWS, t), pad_id, np.int32)
        mask = np.zeros((DECODE_ROWS, t), np.int32)
        target = np.zeros((DECODE_ROWS, t), np.float32)
        for i, g in enumerate(group):
            r = rows[g]
            ids[i, : len(r)], mask[i, : len(r)], target[i, : len(r)] = r, 1, targets[g]
        owner_rows = np.asarray([owner[g] for g in group] + [owner[group[0]]] * (DECODE_ROWS - len(group)))
        pix = {k: jnp.asarray(np.asarray(v)[owner_rows]) for k, v in (images or {}).items()}
        logp = _sequence_logprobs(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(target), pix)
        scores[group] = np.asarray(logp)[: len(group)]
    out, i = [], 0
    for options in option_ids:
        out.append([float(s) for s in scores[i: i + len(options)]])
        i += len(options)
    return out
