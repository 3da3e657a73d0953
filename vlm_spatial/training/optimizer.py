"""Optimizer, learning-rate schedules, and which parts of the model train.

Training state holds parameters as a pure nested dict keyed like the model's attributes:
`{'vision': ..., 'projector': ..., 'decoder': ...}`. A stage trains a subset of the *parts*
('vision', 'projector', 'lm'); only that subset is given to the optimizer, so frozen parts carry
no optimizer state at all.
"""
from __future__ import annotations

import math
from typing import Sequence

import optax

# THE table of trainable parts: part name (config `stages.<name>.trainable_parts`) -> top-level
# subtree of the VLM's params (its attribute)
PARTS = {"vision": "vision", "projector": "projector", "lm": "decoder"}
SCHEDULES = ("cosine", "linear", "constant")


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """Validate part names; returns them as a tuple. Raises ValueError naming the bad entry."""
    parts = tuple(parts)
    if not parts:
        raise ValueError(f"no trainable parts; choose from {sorted(PARTS)}")
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"unknown trainable part {p!r}; choose from {sorted(PARTS)}")
    return parts


def split_params(params: dict, parts: Sequence[str]) -> tuple[dict, dict]:
    """Split a pure params dict into `(trainable, frozen)` by top-level part."""
    keys = {PARTS[p] for p in check_parts(parts)}
    missing = keys - set(params)
    if missing:
        raise KeyError(f"trainable parts {sorted(missing)} are not in the params tree {sorted(params)}")
    trainable = {k: v for k, v in params.items() if k in keys}
    frozen = {k: v for k, v in params.items() if k not in keys}
    return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> dict:
    """Inverse of `split_params`."""
    return {**frozen, **trainable}


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Hugging Face's `ceil(warmup_ratio * total_steps)`."""
    return int(math.ceil(warmup_ratio * total_steps))


def lr_schedule(lr: float, total_steps: int, warmup_ratio: float = 0.03, kind: str = "cosine"):
    """Learning rate as a function of the optimizer step, as Hugging Face's Trainer does it:
    linear warm-up from 0 over `ceil(warmup_ratio*total)` steps, then cosine (or linear, or
    constant) decay to 0 at `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; one of {', '.join(SCHEDULES)}")
    total_steps = max(int(total_steps), 1)
    warm = min(warmup_steps(total_steps, warmup_ratio), total_steps)
    if warm == total_steps:  # every step warms up (e.g. a one-step stage): nothing left to decay
        return optax.linear_schedule(0.0, lr, warm)
    if kind == "cosine":
        if warm == 0:
            return optax.cosine_decay_schedule(lr, total_steps)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, total_steps, end_value=0.0)
    if kind == "linear":
        decay = optax.linear_schedule(lr, 0.0, max(total_steps - warm, 1))
    else:
        decay = optax.constant_schedule(lr)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def make_optimizer(
    schedule,
    *,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW (Hugging Face defaults) with optional global-norm clipping."""
    chain = []
    if max_grad_norm:
        chain.append(optax.clip_by_global_norm(max_grad_norm))
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*chain)
