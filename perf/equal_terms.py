"""The shared harness of the perf/ comparisons: both sides on equal terms, ratios only for equal work.

A comparison of this codebase (JAX) against transformers (PyTorch) in one process is fair when
  - both sides run on the same CPUs with the same number of compute threads: `pin(threads, cpus)`
    binds every thread of the process (and every thread started later) to `cpus`, gives torch
    `threads` intra-op threads and XLA:CPU the flags it parses (`xla_flags`: each with its `--`;
    XLA silently ignores a token without it) before the XLA backend starts. XLA:CPU sizes its
    intra-op pool from the CPUs the process may run on, so the binding is what limits it;
  - time is measured as wall time AND process CPU time (`time.process_time`, all threads: on a
    loaded machine wall time measures the load, CPU time the work), over rounds that alternate
    which side goes first, reporting each side's median round (`alternate`);
  - the work is the same: a ratio is printed only after `require_equal` has checked it (same loss
    to 5 decimals, same greedy tokens); otherwise `ratio_lines` refuses with what differed.
`describe_backends` says which backend, threads and kernels each side ran with.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from typing import Callable, Mapping, Sequence

LOSS_DECIMALS = 5


def xla_flags(threads: int) -> list[str]:
    """The XLA_FLAGS tokens for `threads` compute threads on XLA:CPU (`--name=value` each): one
    thread switches Eigen's multi-threaded matmuls off; the pool size follows the CPU binding."""
    if threads < 1:
        raise ValueError(f"threads={threads}: need at least 1")
    return [f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"]


def merged_xla_flags(existing: str, flags: Sequence[str]) -> str:
    """`existing` XLA_FLAGS with each of `flags` set (a token naming the same flag is replaced)."""
    names = {f.split("=", 1)[0] for f in flags}
    kept = [tok for tok in existing.split() if tok.split("=", 1)[0] not in names]
    return " ".join(kept + list(flags))


def _xla_backend_started() -> bool:
    """Whether jax has created a backend in this process (after that XLA_FLAGS are read)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge._backends)


def _task_ids() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


@dataclasses.dataclass(frozen=True)
class Pinning:
    """What `pin` set: the CPUs every thread may run on, the compute threads of each side, and
    whether XLA_FLAGS took effect (False when the backend had started before `pin`)."""

    cpus: tuple[int, ...]
    threads: int
    xla_flags: str
    xla_flags_applied: bool


def pin(threads: int, cpus: Sequence[int] | None = None) -> Pinning:
    """Bind this process (every existing thread, and so every later one) to `cpus` (default: the
    first `threads` CPUs it may use now), set torch's intra-op threads to `threads` and XLA_FLAGS
    for XLA:CPU. Call before jax creates its backend; returns the `Pinning`."""
    allowed = sorted(os.sched_getaffinity(0))
    cpus = tuple(sorted(cpus)) if cpus is not None else tuple(allowed[:threads])
    if len(cpus) < threads:
        raise ValueError(f"{threads} threads need {threads} CPUs; this process may use {allowed}")
    for tid in _task_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    started = _xla_backend_started()
    flags = merged_xla_flags(os.environ.get("XLA_FLAGS", ""), xla_flags(threads))
    os.environ["XLA_FLAGS"] = flags
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before torch's first parallel work
        pass
    return Pinning(cpus=cpus, threads=threads, xla_flags=flags, xla_flags_applied=not started)


def thread_affinities() -> dict[int, set[int]]:
    """CPU set of every thread of this process (to check that `pin` held)."""
    out = {}
    for tid in _task_ids():
        try:
            out[tid] = os.sched_getaffinity(tid)
        except ProcessLookupError:
            pass
    return out


@dataclasses.dataclass
class Timing:
    """Per-round wall and process-CPU seconds of one side; `units` is the work of one round
    (samples, tokens) for rates."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of `fn` (which must block until done)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def alternate(sides: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Time each side's callable once per round for `rounds` rounds; round r runs the sides in
    order when r is even and reversed when odd, so drifting load hits both alike."""
    names = list(sides)
    out = {n: Timing() for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            wall, cpu = measure(sides[n])
            out[n].wall.append(wall)
            out[n].cpu.append(cpu)
    return out


@dataclasses.dataclass(frozen=True)
class Check:
    """One equality the ratio relies on: `what` was compared, `ok` whether it held, `detail` the values."""

    what: str
    ok: bool
    detail: str


def same_losses(ours: Sequence[float], theirs: Sequence[float], decimals: int = LOSS_DECIMALS) -> Check:
    """Both sides' losses (same steps) agree to `decimals` decimals (|difference| < 10^-decimals)."""
    diffs = [abs(a - b) for a, b in zip(ours, theirs)]
    ok = len(ours) == len(theirs) > 0 and max(diffs) < 10.0**-decimals
    shown = "; ".join(f"{a:.{decimals + 1}f} vs {b:.{decimals + 1}f}" for a, b in zip(ours, theirs))
    return Check(f"losses equal to {decimals} decimals", ok, shown or "no losses")


def same_tokens(ours, theirs) -> Check:
    """Greedy tokens identical everywhere (same shape, every entry)."""
    import numpy as np

    a, b = np.asarray(ours), np.asarray(theirs)
    if a.shape != b.shape:
        return Check("greedy tokens identical", False, f"shapes {a.shape} vs {b.shape}")
    share = float((a == b).mean()) if a.size else 1.0
    return Check("greedy tokens identical", bool(a.size) and share == 1.0, f"{share:.2%} of {a.size} equal")


class UnequalWork(RuntimeError):
    """The two sides did not do the same work: no ratio is printed."""


def require_equal(checks: Sequence[Check]) -> None:
    """Raise `UnequalWork` naming every failed check (and its values) unless all hold."""
    failed = [c for c in checks if not c.ok]
    if not checks:
        raise UnequalWork("no equality check was made: a ratio needs the work shown to be the same")
    if failed:
        raise UnequalWork("; ".join(f"{c.what} FAILED ({c.detail})" for c in failed))


def ratio_lines(timings: Mapping[str, Timing], units: float, unit: str, checks: Sequence[Check],
                ours: str = "ours", theirs: str = "torch") -> list[str]:
    """The report lines: each check, each side's median rate by wall and by CPU time (`units` of
    `unit` per round), and ours/theirs ratios of both. Raises `UnequalWork` (before any ratio)
    when a check failed."""
    lines = [f"check    {c.what}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in checks]
    require_equal(checks)
    for name, t in timings.items():
        lines.append(
            f"{name:<8} wall {units / t.wall_median:10.2f} {unit}/s   cpu {units / t.cpu_median:10.2f} {unit}/cpu-s"
            f"   (rounds wall {', '.join(f'{w:.3f}' for w in t.wall)} s; cpu {', '.join(f'{c:.3f}' for c in t.cpu)} s)")
    a, b = timings[ours], timings[theirs]
    lines.append(f"ratio    {ours} / {theirs}: wall {b.wall_median / a.wall_median:.2f}x, "
                 f"cpu {b.cpu_median / a.cpu_median:.2f}x   (median of {len(a.wall)} alternating rounds)")
    return lines


def report(timings: Mapping[str, Timing], units: float, unit: str, checks: Sequence[Check], *,
           header: Sequence[str] = (), **names) -> list[str]:
    """Print `header`, then `ratio_lines` (returned); when a check failed, print the checks and
    re-raise `UnequalWork` without any rate or ratio."""
    print("\n".join(header))
    try:
        lines = ratio_lines(timings, units, unit, checks, **names)
    except UnequalWork as e:
        print("\n".join(f"check    {c.what}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in checks))
        print(f"no ratio: the two sides did different work ({e})")
        raise
    print("\n".join(lines))
    return lines


def describe_backends(pinning: Pinning, extra: Mapping[str, str] = ()) -> list[str]:
    """Lines saying what ran: CPUs and threads, jax's backend/devices and XLA flags (and whether
    they applied), torch's version, threads and CPU kernels, plus `extra` lines (name -> text)."""
    import jax
    import torch

    dev = jax.devices()[0]
    torch_kernels = (f"mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'}, "
                     f"mkl {'on' if torch.backends.mkl.is_available() else 'off'}, "
                     f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    lines = [
        f"pinning  cpus {list(pinning.cpus)}, {pinning.threads} compute thread(s) per side; "
        f"XLA_FLAGS {pinning.xla_flags!r} {'applied' if pinning.xla_flags_applied else 'NOT applied (backend had started)'}",
        f"jax      {jax.__version__}, backend {dev.platform} ({dev.device_kind}) x{jax.device_count()}",
        f"torch    {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); {torch_kernels}",
    ]
    lines += [f"{k:<8} {v}" for k, v in dict(extra).items()]
    return lines
