"""`python -m vlm_spatial.convert {assemble,from-hf,to-hf}`: move weights between Hugging Face
directories and vlm_spatial checkpoints (safetensors only, never pickle; no network).

  assemble --vision DIR --lm DIR --out CKPT [--projector mlp2x_gelu] [--image_size 256]
           [--rope2d [--rope2d_theta T] [--rope2d_layers 0,1,...] [--no_abs_pos_emb]]
  from-hf  --src LLAVA_DIR --out CKPT
  to-hf    --src CKPT --out DIR [--dtype bfloat16|float16|float32] [--max_shard_size 5GB]
"""
from __future__ import annotations

import argparse
import sys

from vlm_spatial.models import connectors, families


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(i) for i in text.split(",") if i.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    """The command-line interface (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m vlm_spatial.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("assemble", help="vision tower dir + causal-LM dir + fresh projector -> checkpoint")
    a.add_argument("--vision", required=True, help="HF vision model dir, tower or two-tower, of a registered family "
                   f"({', '.join(families.names())})")
    a.add_argument("--lm", required=True, help="HF causal-LM dir (LLaMA/Vicuna, Qwen2) with its tokenizer")
    a.add_argument("--out", required=True, help="vlm_spatial checkpoint directory to write")
    a.add_argument("--projector", default="mlp2x_gelu", choices=connectors.names())
    a.add_argument("--image_size", type=int, help="input side in pixels (the paper: 256); resizes the "
                   "learned position embedding once, bicubically, as HF interpolate_pos_encoding does")
    a.add_argument("--rope2d", action="store_true", help="2D rotary embedding on the encoder's q and k "
                   "(default: as the tower has it; DINOv3's own is on)")
    a.add_argument("--rope2d_theta", type=float, help="rotary base (VisionConfig default: 100)")
    a.add_argument("--rope2d_layers", type=_layers, help="comma-separated encoder layers that rotate (default: all)")
    a.add_argument("--no_abs_pos_emb", action="store_true", help="with --rope2d: drop the absolute position embedding")
    a.add_argument("--param_dtype", choices=("float32", "bfloat16"), help="storage dtype of the params (default float32)")
    a.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation")

    f = sub.add_parser("from-hf", help="LlavaForConditionalGeneration dir -> checkpoint")
    f.add_argument("--src", required=True, help="HF LLaVA directory (e.g. llava-1.5-7b-hf)")
    f.add_argument("--out", required=True, help="vlm_spatial checkpoint directory to write")
    f.add_argument("--param_dtype", choices=("float32", "bfloat16"), help="storage dtype of the params (default float32)")

    t = sub.add_parser("to-hf", help="checkpoint -> LlavaForConditionalGeneration dir")
    t.add_argument("--src", required=True, help="vlm_spatial checkpoint (or training workdir: newest stage)")
    t.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="tensor dtype (default: the params')")
    t.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad inputs end with a one-paragraph message and exit status 1."""
    args = parser().parse_args(argv)
    try:
        if args.command == "assemble":
            if (args.rope2d_theta is not None or args.rope2d_layers is not None or args.no_abs_pos_emb) and not args.rope2d:
                raise ValueError("--rope2d_theta, --rope2d_layers and --no_abs_pos_emb need --rope2d")
            from vlm_spatial.convert.assemble import assemble

            cfg = assemble(
                args.vision, args.lm, args.out, projector=args.projector, image_size=args.image_size,
                rope2d=args.rope2d or None, rope2d_theta=args.rope2d_theta, rope2d_layers=args.rope2d_layers,
                keep_abs_pos_emb=False if args.no_abs_pos_emb else None, param_dtype=args.param_dtype, seed=args.seed,
            )
            print(f"wrote {args.out}: {cfg.vision.family} encoder at {cfg.vision.image_size}px "
                  f"({cfg.num_image_tokens} image tokens, 2D-RoPE {'on' if cfg.vision.rope2d else 'off'}) + "
                  f"{cfg.decoder.family} LM (vocab {cfg.decoder.vocab_size}, <image> = {cfg.image_token_id}) + "
                  f"fresh {cfg.projector} projector")
        elif args.command == "from-hf":
            from vlm_spatial.convert.hf_llava import import_hf

            import_hf(args.src, args.out, param_dtype=args.param_dtype)
            print(f"wrote {args.out}")
        else:
            from vlm_spatial.convert.export import to_hf

            for note in to_hf(args.src, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size):
                print(f"NOTE: {note}")
            print(f"wrote {args.out}")
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
