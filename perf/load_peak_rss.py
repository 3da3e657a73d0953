"""Peak host memory of `vlm_spatial.load` streaming a sharded Hugging Face LLaVA directory.

The parent writes a random float32 model of a few hundred MB in the public LLaVA layout (a small
CLIP tower, the projector and a LLaMA-shaped LM of the given size) as several safetensors shards,
then loads it in a fresh subprocess on one CPU device. The child reports:

  baseline_mb  RSS after importing vlm_spatial/jax/transformers and starting the JAX backend
               (/proc/self/status VmRSS): the interpreter's fixed cost, subtracted because it
               does not grow with the model;
  peak_mb      peak RSS of the process (resource.getrusage ru_maxrss) after the load;
  ratio        (peak_mb - baseline_mb) / model_mb: host memory the loader needs per byte of
               model. Holding the model once is 1.0; a loader that first reads everything and
               then converts or places it would be >= 2.0. The target is < 1.5.

    python perf/load_peak_rss.py                       # 655 MB model in 8 shards
    python perf/load_peak_rss.py --layers 6 --shards 4  # 361 MB (what the slow test runs)

The fixed part of the loader's memory (compiled row writers, allocator slack of about two of the
largest tensors) is ~100-150 MB, so the ratio falls towards 1.0 as models grow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time


def model_config(vocab: int, hidden: int, layers: int):
    """A LLaVA config: tiny CLIP tower + LLaMA LM (`hidden` wide, `layers` deep, vocab `vocab`)."""
    from vlm_spatial.models.presets import vlm_config

    decoder = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
                   num_layers=layers, num_heads=hidden // 64, num_kv_heads=hidden // 64, head_dim=64)
    return vlm_config("tiny-clip", "tiny-llama", image_token_id=vocab - 1, decoder_overrides=decoder)


def write_model(path: str, vocab: int, hidden: int, layers: int, shards: int) -> int:
    """Write the random model (float32 safetensors in `shards` files + config.json); returns bytes."""
    import numpy as np

    from vlm_spatial.convert import export, hf_io, hf_llava

    cfg = model_config(vocab, hidden, layers)
    shapes = hf_llava.expected_hf_shapes(cfg)
    sizes = {name: math.prod(s) * 4 for name, s in shapes.items()}
    total = sum(sizes.values())
    rng = np.random.default_rng(0)
    plan = hf_io.shard_plan(sizes, total // shards + 1)
    hf_io.write_safetensors(path, plan, lambda name: rng.standard_normal(shapes[name], np.float32) * 0.02)
    export.write_config(path, cfg, "float32")
    return total


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(path: str) -> None:
    """Load `path` and print one JSON line with the figures (module docstring)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from transformers import AutoTokenizer  # noqa: F401 - everything the load imports, before the baseline

    import vlm_spatial
    from vlm_spatial import api  # noqa: F401

    jnp.zeros(1).block_until_ready()
    baseline = _vm_rss_bytes()
    start = time.perf_counter()
    vlm = vlm_spatial.load(path)
    leaves = jax.tree.leaves(nnx.state(vlm.model))
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    model = sum(x.nbytes for x in leaves)
    mb = 2**20
    print(json.dumps({
        "model_mb": round(model / mb, 1), "baseline_mb": round(baseline / mb, 1), "peak_mb": round(peak / mb, 1),
        "ratio": round((peak - baseline) / model, 3), "load_s": round(seconds, 2),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="where to write the model (default: a temporary directory)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dir or os.path.join(tmp, "model")
        total = write_model(path, args.vocab, args.hidden, args.layers, args.shards)
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        print(f"wrote {total / 2**20:.0f} MB float32 in {len(files)} shards to {path}", file=sys.stderr)
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
        out = subprocess.run([sys.executable, __file__, "--child", path], env=env, check=True,
                             capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"model {result['model_mb']} MB | RSS after imports {result['baseline_mb']} MB | peak RSS "
          f"{result['peak_mb']} MB | (peak - after imports) / model = {result['ratio']} | load {result['load_s']} s",
          file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
