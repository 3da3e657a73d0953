"""The pure train step: fp32 loss on HF-shifted labels, gradient accumulation, frozen parts.

Training state (a pytree, sharded by `parallel`):

  state = {'params':    pure nested dict of ALL model params (fp32 master weights),
           'opt_state': optax state over the TRAINABLE subset only,
           'step':      int32 [] optimizer steps taken,
           'rng':       uint32 [2] raw PRNG key data (advanced every step)}

`make_train_step(...)` returns `train_step(state, batch) -> (state, metrics)`, a pure function to
be jitted with explicit shardings (`jit_train_step`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.traverse_util import flatten_dict

from vlm_spatial import parallel
from vlm_spatial.training.optimizer import merge_params, split_params

IGNORE_INDEX = -100
LOSS_CHUNK = 256  # tokens per block of the chunked loss: 16 rows x 256 x 32064 vocab float32 = 0.5 GiB
MODEL_INPUTS = ("input_ids", "pixel_values", "attention_mask", "pixel_attention_mask", "spatial_shapes")


def shifted_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token cross-entropy as Hugging Face computes it for causal LMs, in float32.

    logits `[B, T, V]`, labels `[B, T]` (-100 = ignore). Position t predicts label t+1.
    Returns `(sum of token losses [], number of target tokens [])`.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = jnp.where(mask, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    nll = jnp.where(mask, logz - picked, 0.0)
    return nll.sum(), mask.sum().astype(jnp.float32)


def chunked_shifted_cross_entropy(
    hidden: jax.Array, labels: jax.Array, logits_fn: Callable[[jax.Array], jax.Array], chunk: int = LOSS_CHUNK
) -> tuple[jax.Array, jax.Array]:
    """`shifted_cross_entropy(logits_fn(hidden), labels)` without the `[B, T, V]` logits.

    hidden `[B, T, D]` (the decoder's final normed state), labels `[B, T]`, `logits_fn` maps
    `[B, c, D]` to float32 logits `[B, c, V]`. A `lax.scan` over blocks of `chunk` positions (T
    padded up to a multiple with ignored targets), each under `jax.checkpoint`, so forward and
    backward hold one block's logits at a time. Returns `(sum of token losses [], target count [])`.
    """
    b, t, d = hidden.shape
    chunk = min(chunk, t)
    n = -(-t // chunk)
    pad = n * chunk - t
    targets = jnp.concatenate([labels[:, 1:], jnp.full((b, 1 + pad), IGNORE_INDEX, labels.dtype)], axis=1)
    hs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def block(total, xs):
        h, tgt = xs
        logits = parallel.constrain(logits_fn(h).astype(jnp.float32), ("batch", None, "vocab"))
        mask = tgt != IGNORE_INDEX
        picked = jnp.take_along_axis(logits, jnp.where(mask, tgt, 0)[..., None], axis=-1)[..., 0]
        nll = jnp.where(mask, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)
        return total + nll.sum(), None

    total, _ = jax.lax.scan(block, jnp.zeros((), jnp.float32), (hs, ts))
    return total, (targets != IGNORE_INDEX).sum().astype(jnp.float32)


def pure_to_state(abstract_state: nnx.State, pure: dict) -> nnx.State:
    """An `nnx.State` shaped like `abstract_state` (Variables, metadata) holding `pure`'s arrays.

    Keys may be ints (nnx lists) or their string forms (as Orbax restores them)."""
    flat_pure = flatten_dict(pure)
    items = []
    for path, var in nnx.to_flat_state(abstract_state):
        key = path if path in flat_pure else tuple(str(k) for k in path)
        items.append((path, var.replace(flat_pure[key])))
    return nnx.from_flat_state(items)


def microbatches(batch: dict, accum: int) -> dict:
    """Reshape every `[B, ...]` array to `[accum, B/accum, ...]`, microbatch a = rows a, a+accum, ...

    This interleaved split keeps each device's contiguous shard of the batch dimension within the
    microbatch dimension, so no data moves between devices."""

    def split(x):
        b = x.shape[0]
        if b % accum:
            raise ValueError(f"batch of {b} rows is not divisible by grad_accum_steps={accum}")
        x = x.reshape(b // accum, accum, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def make_train_step(
    graphdef: nnx.GraphDef,
    abstract_params: nnx.State,
    rest: nnx.State,
    tx: optax.GradientTransformation,
    schedule: Callable[[Any], Any],
    trainable_parts: Sequence[str],
    grad_accum_steps: int = 1,
):
    """Build `train_step(state, batch) -> (state, metrics)`.

    `graphdef`, `abstract_params` (the `nnx.Param` State, values may be abstract) and `rest`
    (every other variable) come from `nnx.split(model, nnx.Param, ...)`. `batch` follows the
    batch contract (CONTRIBUTING.md) with global batch `B = grad_accum_steps * microbatch`; the
    loss is the mean over ALL target tokens of the global batch, so accumulation is exact.
    metrics: loss, grad_norm, lr, target_tokens, tokens (non-pad input tokens).
    """
    trainable_parts = tuple(trainable_parts)

    def loss_fn(trainable, frozen, mb):
        params = merge_params(trainable, frozen)
        model = nnx.merge(graphdef, pure_to_state(abstract_params, params), rest)
        kwargs = {k: mb[k] for k in MODEL_INPUTS[2:] if k in mb}
        out = model(mb["input_ids"], mb["pixel_values"], **kwargs, output_hidden_states=False, output_logits=False)
        return chunked_shifted_cross_entropy(out.last_hidden_state, mb["labels"], model.decoder.logits)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict, batch: dict):
        trainable, frozen = split_params(state["params"], trainable_parts)
        frozen = jax.lax.stop_gradient(frozen)
        if grad_accum_steps == 1:
            (loss_sum, count), grads = grad_fn(trainable, frozen, batch)
        else:
            mbs = microbatches(batch, grad_accum_steps)
            zeros = jax.tree.map(jnp.zeros_like, trainable)

            def body(carry, mb):
                g_acc, l_acc, c_acc = carry
                (l, c), g = grad_fn(trainable, frozen, mb)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, c_acc + c), None

            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss_sum, count), _ = jax.lax.scan(body, init, mbs)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
        new_state = {
            "params": merge_params(trainable, frozen),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": rng,
        }
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": optax.global_norm(grads),
            "lr": jnp.asarray(schedule(state["step"]), jnp.float32),
            "target_tokens": count,
            "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32)
            if "attention_mask" in batch
            else jnp.asarray(batch["input_ids"].size, jnp.float32),
        }
        return new_state, metrics

    return train_step


def init_train_state(params: dict, tx: optax.GradientTransformation, trainable_parts, seed: int) -> dict:
    """A fresh training state from a pure params dict (optimizer state over the trainable parts)."""
    trainable, _ = split_params(params, trainable_parts)
    return {
        "params": params,
        "opt_state": tx.init(trainable),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def state_shardings(abstract_state: dict, params_shardings: dict, tx, trainable_parts, mesh) -> dict:
    """Shardings for the training state: params by the logical rules, optimizer moments like their
    params, step and rng replicated."""
    trainable_sh, _ = split_params(params_shardings, trainable_parts)
    return {
        "params": params_shardings,
        "opt_state": parallel.opt_state_shardings(tx, abstract_state["opt_state"], trainable_sh, mesh),
        "step": parallel.replicated(mesh),
        "rng": parallel.replicated(mesh),
    }


def jit_train_step(train_step, state_sh: dict, batch_sh: dict, *, donate: bool = True):
    """`jax.jit` with explicit in/out shardings; the state is donated (updated in place). The step
    is traced with the mesh in context, so the model's activation constraints apply."""
    mesh = next(iter(jax.tree.leaves(state_sh))).mesh

    def step_on_mesh(state, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return train_step(state, batch)

    return jax.jit(
        step_on_mesh,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, parallel.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )
