"""AOT-compile the stage-2 train step of the real 7B LLaVA-1.5 and print its per-device memory.

What is compiled: `vlm_spatial.training.step`'s train step (AdamW, fp32 master weights, bf16
compute, fp32 loss) for CLIP-L/14 + 2-layer MLP projector + Vicuna-7B v1.5 (the
`llava-1.5-7b` preset), with the vision encoder at `--image_size` (default: the paper's 256x256,
i.e. 18x18 = 324 patches; 252 px are used, as a stride-14 conv does). The state and the batch are
`jax.ShapeDtypeStruct`s carrying their shardings, so no weight is ever allocated: the figures come
from `compiled.memory_analysis()` of the per-device (SPMD-partitioned) program.

Without accelerators, run it on fake CPU devices (the script sets
`--xla_force_host_platform_device_count` to the mesh size before jax starts). The CPU compiler is
not the GPU compiler: it computes bf16 in float32 and keeps float32 copies of bf16 buffers, so its
figures over-estimate a GPU's. The largest such copy is separable and the script reports it: the
stack of per-layer decoder inputs saved for the backward pass ([layers, rows, T, D], bf16) is
held whole in float32 on CPU (XLA:CPU converts it around the dynamic slicing of the backward
loop), twice its GPU size. The per-layer working set has smaller float32 copies (e.g. of the MLP
activations) that are not subtracted. Attention on CPU is XLA's, in query blocks; a GPU runs
cuDNN flash attention (`models/layers.attention`), which holds no scores at all. Re-run on the
GPU node for the A40 answer. `XLA_FLAGS=--xla_dump_to=DIR` writes `DIR/*memory-usage-report.txt`,
the largest buffers behind a figure.

    python perf/compile_7b.py                                  # fsdp=8, 16 rows/device, 2048 tokens, remat full
    python perf/compile_7b.py --remat none
    python perf/compile_7b.py --mesh data=2,fsdp=4 --grad_accum 2
    python perf/compile_7b.py --lm_layers 2 --vision_layers 2  # shallow variant: a quick check
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time

A40_BYTES = 46068 * 2**20  # what nvidia-smi reports for an A40 ("48 GB" GDDR6)
TRAINABLE = {"stage1": ("projector",), "stage2": ("projector", "lm"), "full": ("vision", "projector", "lm")}


def parse_mesh(text: str) -> dict[str, int]:
    """'data=1,fsdp=8,tensor=1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}; missing axes are 1."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in sizes or not value.lstrip("-").isdigit():
            raise SystemExit(f"--mesh: bad entry {item!r}; expected e.g. data=1,fsdp=8,tensor=1")
        sizes[name] = int(value)
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh", default="data=1,fsdp=8,tensor=1", help="mesh sizes; one may be -1 (the rest)")
    p.add_argument("--devices", type=int, default=8, help="device count when the mesh has a -1 (CPU fake devices)")
    p.add_argument("--per_device_batch", type=int, default=16, help="rows per data-parallel shard per step")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--grad_accum", type=int, default=1, help="microbatches the per-step batch is split into")
    p.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--trainable", default="stage2", choices=sorted(TRAINABLE),
                   help="stage2 = projector + LM (LLaVA-1.5 fine-tuning); full = also the vision encoder")
    p.add_argument("--lm_layers", type=int, default=None, help="override the LM depth (shallow check)")
    p.add_argument("--vision_layers", type=int, default=None, help="override the encoder depth")
    return p.parse_args(argv)


def device_count(mesh: dict[str, int], devices: int) -> int:
    """Devices the mesh needs: the product of its sizes, or `devices` when one size is -1."""
    return devices if -1 in mesh.values() else math.prod(mesh.values())


def cpu_f32_stack_bytes(hlo_text: str, shape: tuple[int, ...]) -> int:
    """Bytes of a float32 `convert` of the bf16 layer-input stack `shape` ([layers, rows, T, D])
    in the compiled program's HLO text (XLA:CPU makes one; a GPU keeps the stack bf16), else 0."""
    pattern = re.escape("f32[" + ",".join(map(str, shape)) + "]") + r"\{[^}]*\} convert\("
    return 4 * math.prod(shape) if re.search(pattern, hlo_text) else 0


def gib(n: float) -> str:
    return f"{n / 2**30:8.2f} GiB"


def main(argv=None) -> dict:
    args = parse_args(argv)
    mesh_sizes = parse_mesh(args.mesh)
    flag = f"--xla_force_host_platform_device_count={device_count(mesh_sizes, args.devices)}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vlm_spatial import parallel
    from vlm_spatial.models.presets import VLM_PRESETS
    from vlm_spatial.models.vlm import VLM
    from vlm_spatial.training.loop import StageSpec, build_stage

    base = VLM_PRESETS["llava-1.5-7b"]()
    vision = dataclasses.replace(
        base.vision, image_size=args.image_size, dtype="bfloat16", param_dtype="float32", remat_policy=args.remat,
        **({"num_layers": args.vision_layers} if args.vision_layers else {}),
    )
    decoder = base.decoder.replace(
        dtype="bfloat16", param_dtype="float32", remat_policy=args.remat,
        **({"num_layers": args.lm_layers} if args.lm_layers else {}),
    )
    cfg = dataclasses.replace(base, vision=vision, decoder=decoder)

    mesh = parallel.make_mesh(**mesh_sizes)
    dp = parallel.batch_divisor(mesh)
    global_batch = args.per_device_batch * dp
    spec = StageSpec(name="finetune", num_steps=1000, trainable_parts=TRAINABLE[args.trainable], lr=2e-5,
                     global_batch=global_batch, grad_accum_steps=args.grad_accum)
    t0 = time.perf_counter()
    setup = build_stage(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh, spec)
    state = parallel.abstract_with_shardings(setup.abstract_state, setup.state_shardings)

    b, t, s = global_batch, args.seq_len, args.image_size
    if cfg.num_image_tokens >= t:
        raise SystemExit(f"--seq_len {t} leaves no room for text after {cfg.num_image_tokens} image tokens")
    batch_shapes = {"input_ids": ((b, t), jnp.int32), "attention_mask": ((b, t), jnp.int32),
                    "labels": ((b, t), jnp.int32), "pixel_values": ((b, s, s, 3), jnp.float32)}
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in batch_shapes.items()}
    batch = parallel.abstract_with_shardings(abstract_batch, parallel.batch_shardings(abstract_batch, mesh))

    t1 = time.perf_counter()
    lowered = setup.step_fn(abstract_batch).lower(state, batch)
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    mem = compiled.memory_analysis()

    n_params = sum(setup.param_counts.values())
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract_state["opt_state"])
                  if getattr(x, "ndim", 0) > 0) // 2
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    print(f"model      CLIP-L/14 @ {s}x{s} ({cfg.num_image_tokens} image tokens, {vision.num_layers} layers) + "
          f"projector + Vicuna-7B ({decoder.num_layers} layers); {n_params / 1e9:.2f} B params, "
          f"{n_train / 1e9:.2f} B trainable ({'+'.join(spec.trainable_parts)})")
    print(f"step       AdamW, fp32 master weights, bf16 compute, fp32 loss; remat={args.remat}; "
          f"grad_accum={args.grad_accum}")
    print(f"mesh       {dict(mesh.shape)} on {mesh.size} x {mesh.devices.flat[0].device_kind}; "
          f"batch {global_batch} rows x {t} tokens ({args.per_device_batch} per data shard)")
    print(f"time       build {t1 - t0:.1f} s, lower {t2 - t1:.1f} s, compile {t3 - t2:.1f} s")
    print("per-device memory (compiled.memory_analysis)")
    for name, value in (("arguments", mem.argument_size_in_bytes), ("outputs", mem.output_size_in_bytes),
                        ("aliased", mem.alias_size_in_bytes), ("temp", mem.temp_size_in_bytes),
                        ("generated code", mem.generated_code_size_in_bytes)):
        print(f"  {name:<15}{gib(value)}")
    print(f"  {'total':<15}{gib(total)}   (arguments + outputs - aliased + temp + code)")
    fits = total <= A40_BYTES
    print(f"A40 ({A40_BYTES / 2**30:.1f} GiB usable): {'fits' if fits else 'does NOT fit'} "
          f"({100 * total / A40_BYTES:.0f}% of it)")
    rows = global_batch // args.grad_accum // dp
    stack = cpu_f32_stack_bytes(compiled.as_text(), (decoder.num_layers, rows, t, decoder.hidden_size))
    if stack:
        gpu = total - stack // 2
        print(f"CPU-only excess: the bf16 layer-input stack [{decoder.num_layers},{rows},{t},"
              f"{decoder.hidden_size}] is held as float32 ({gib(stack).strip()}; a GPU keeps "
              f"{gib(stack // 2).strip()} of bf16). GPU estimate {gib(gpu).strip()}, "
              f"{'fits' if gpu <= A40_BYTES else 'does NOT fit'} ({100 * gpu / A40_BYTES:.0f}% of an A40)")
    sys.stdout.flush()
    return {"total": total, "temp": mem.temp_size_in_bytes, "arguments": mem.argument_size_in_bytes,
            "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes,
            "compile_s": t3 - t2, "fits_a40": fits, "cpu_f32_stack": stack, "n_params": n_params,
            "n_trainable": n_train, "global_batch": global_batch, "devices": mesh.size}


if __name__ == "__main__":
    main()
