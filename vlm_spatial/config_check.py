"""Validate a training config (`configs/*.py`) before anything heavy starts.

`validate(config, num_devices, num_processes)` checks every field the job reads: types and ranges,
stage names, trainable parts, mesh sizes against the device count, batch divisibility, and that
every data/weights path exists. All problems are reported at once in a `ConfigError` whose lines
each name the field (as the `--config.<field>=` override that fixes it) and what to put there.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

STAGES = ("pretrain", "finetune", "eval")
TRAIN_STAGES = ("pretrain", "finetune")
PARTS = ("projector", "lm", "vision")
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "linear", "constant")
TEMPLATES = ("plain", "vicuna_v1")
DATA_KINDS = ("llava", "synthetic")
SYNTHETIC_SPLITS = ("pretrain", "train")
# encoder family of the config's preset -> families a checkpoint's encoder may have
# (SigLIP2 so400m/14-384 is published in the SigLIP layout)
COMPATIBLE_FAMILIES = {"clip": ("clip",), "siglip": ("siglip",), "siglip2": ("siglip2", "siglip"),
                       "aimv2": ("aimv2",)}

ASSEMBLE = ("a checkpoint written by `python -m vlm_spatial.convert assemble --vision <HF encoder dir> "
            "--lm <HF lmsys/vicuna-7b-v1.5 dir> --out CKPT`")
PATH_HINTS = {
    ("pretrain", "data_file"): "LLaVA-Pretrain's blip_laion_cc_sbu_558k.json "
                               "(huggingface.co/datasets/liuhaotian/LLaVA-Pretrain)",
    ("pretrain", "image_root"): "the folder its 'image' paths are relative to (LLaVA-Pretrain/images)",
    ("finetune", "data_file"): "llava_v1_5_mix665k.json (huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K)",
    ("finetune", "image_root"): "the folder holding coco/ gqa/ ocr_vqa/ textvqa/ vg/ (LLaVA-1.5's playground/data)",
}


class ConfigError(ValueError):
    """The config has problems; `problems` is a list of 'field: what is wrong; what to put there'."""

    def __init__(self, problems: list[str], source: str = "the config"):
        self.problems = problems
        lines = "\n".join(f"  --config.{p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


class _Checker:
    def __init__(self, config):
        self.c = config
        self.problems: list[str] = []

    def bad(self, field: str, msg: str) -> None:
        self.problems.append(f"{field}: {msg}")

    def get(self, field: str, types, default: Any = None, required: bool = True):
        """The value at dotted `field`, or `default` after recording a problem if it is missing or
        not of `types`."""
        node = self.c
        for key in field.split("."):
            try:
                node = node[key]
            except (KeyError, TypeError, AttributeError):
                if required:
                    self.bad(field, "missing; add it to the config (see configs/common.py)")
                return default
        if isinstance(types, tuple) and float in types and isinstance(node, int) and not isinstance(node, bool):
            node = float(node)
        if not isinstance(node, types) or (isinstance(node, bool) and bool not in _as_tuple(types)):
            self.bad(field, f"{node!r} is a {type(node).__name__}; expected {_type_names(types)}")
            return default
        return node

    def choice(self, field: str, allowed) -> str | None:
        v = self.get(field, str)
        if v is not None and v not in allowed:
            self.bad(field, f"{v!r} is not one of {', '.join(map(str, allowed))}")
            return None
        return v

    def number(self, field: str, types, lo=None, hi=None, lo_open=False, hi_open=False):
        v = self.get(field, types)
        if v is None:
            return None
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            self.bad(field, f"{v} is out of range; put a value {' and '.join(s for s in (lo_s, hi_s) if s)}")
            return None
        return v

    def path(self, field: str, what: str, *, kind: str = "any", inside: tuple[str, ...] = ()) -> str | None:
        """A path that must exist (`kind` 'file' | 'dir' | 'any') and hold `inside` entries."""
        v = self.get(field, str)
        if v is None:
            return None
        if not v:
            self.bad(field, f"not set; put {what} there")
            return None
        p = os.path.expanduser(v)
        ok = {"file": os.path.isfile, "dir": os.path.isdir, "any": os.path.exists}[kind](p)
        if not ok:
            self.bad(field, f"{v!r} does not exist{'' if kind == 'any' else f' (or is not a {kind})'}; put {what} there")
            return None
        missing = [e for e in inside if not os.path.exists(os.path.join(p, e))]
        if missing:
            self.bad(field, f"{v!r} has no {', '.join(missing)}; put {what} there")
            return None
        return p


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _plain(d) -> dict:
    """A ConfigDict (or dict, or None) as a plain dict."""
    if d is None:
        return {}
    return d.to_dict() if hasattr(d, "to_dict") else dict(d)


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def split_parts(parts) -> tuple[str, ...]:
    """Trainable parts as a tuple; entries given comma-joined on the command line are split."""
    return tuple(p.strip() for entry in parts for p in str(entry).split(",") if p.strip())


def resolve_mesh(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int] | None:
    """Mesh sizes with a -1 filled in, or None when they cannot cover `num_devices`."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        return None
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            return None
        sizes[sizes.index(-1)] = num_devices // known
    return tuple(sizes) if math.prod(sizes) == num_devices else None


def _check_model(ck: _Checker, data_kind: str | None) -> None:
    from vlm_spatial.models import decoder as dec
    from vlm_spatial.models import layers
    from vlm_spatial.models import vision as vis

    random_init = ck.get("model.random_init", bool)
    vision = ck.get("model.vision", str)
    if vision is not None and vision not in vis.VISION_PRESETS:
        ck.bad("model.vision", f"unknown encoder preset {vision!r}; one of {', '.join(sorted(vis.VISION_PRESETS))}")
        vision = None
    decoder = ck.get("model.decoder", str)
    if decoder is not None and decoder not in dec.DECODER_PRESETS:
        ck.bad("model.decoder", f"unknown LM preset {decoder!r}; one of {', '.join(sorted(dec.DECODER_PRESETS))}")
    for field, cls in (("model.vision_overrides", vis.VisionConfig), ("model.decoder_overrides", dec.DecoderConfig)):
        overrides = _plain(ck.get(field, object))
        known = set(cls.__dataclass_fields__)
        for key in overrides:
            if key not in known:
                ck.bad(f"{field}.{key}", f"not a field of {cls.__name__}; one of {', '.join(sorted(known))}")
    if random_init and data_kind == "llava":
        ck.bad("model.random_init", "LLaVA data is encoded with the initial checkpoint's tokenizer; put False and "
                                    f"set model.init_checkpoint to {ASSEMBLE}")
    if random_init is False:
        inside = ("model_config.json", "tokenizer") if data_kind == "llava" else ("model_config.json",)
        ckpt = ck.path("model.init_checkpoint", ASSEMBLE, kind="dir", inside=inside)
        if ckpt is not None and vision is not None:
            with open(os.path.join(ckpt, "model_config.json")) as f:
                family = json.load(f).get("vision", {}).get("family")
            want = vis.VISION_PRESETS[vision].family
            if family not in COMPATIBLE_FAMILIES[want]:
                ck.bad("model.init_checkpoint", f"{ckpt!r} holds a {family} encoder but this variant's encoder "
                                                f"is {want} (model.vision={vision!r}); assemble a {want} checkpoint")
    ck.get("model.rope2d", bool)
    ck.number("model.rope2d_theta", (int, float), 0, lo_open=True)
    size = ck.number("model.image_size", int, 1)
    if size is not None and vision is not None:
        patch = _plain(ck.get("model.vision_overrides", object)).get("patch_size",
                                                                    vis.VISION_PRESETS[vision].patch_size)
        if size < patch:
            ck.bad("model.image_size", f"{size} is smaller than the encoder's patch size {patch}")
    ck.choice("model.dtype", DTYPES)
    ck.choice("model.param_dtype", ("float32", "bfloat16"))
    ck.choice("model.remat_policy", tuple(layers.REMAT_POLICIES))


def _check_stage(ck: _Checker, name: str, data_kind: str | None, batch_shards: int | None, num_processes: int) -> None:
    s = f"stages.{name}"
    if ck.get(s, object) is None:
        return
    parts = ck.get(f"{s}.trainable_parts", (tuple, list))
    if parts is not None:
        parts = split_parts(parts)
        bad = [p for p in parts if p not in PARTS]
        if bad or not parts:
            ck.bad(f"{s}.trainable_parts", f"{bad or 'empty'}: put a tuple of {', '.join(PARTS)}, "
                                           f"e.g. \"('projector','lm')\"")
    ck.number(f"{s}.lr", (int, float), 0, lo_open=True)
    ck.choice(f"{s}.schedule", SCHEDULES)
    ck.number(f"{s}.warmup_ratio", (int, float), 0, 1, hi_open=True)
    ck.number(f"{s}.weight_decay", (int, float), 0)
    ck.number(f"{s}.max_grad_norm", (int, float), 0)
    gb = ck.number(f"{s}.global_batch", int, 1)
    accum = ck.number(f"{s}.grad_accum_steps", int, 1)
    if gb is not None and accum is not None and batch_shards is not None:
        if gb % (accum * batch_shards):
            ck.bad(f"{s}.global_batch", f"{gb} is not divisible by grad_accum_steps * data * fsdp = "
                                        f"{accum} * {batch_shards}; put a multiple of {accum * batch_shards} "
                                        f"(or change {s}.grad_accum_steps / mesh)")
        elif gb % num_processes:
            ck.bad(f"{s}.global_batch", f"{gb} is not divisible by the {num_processes} processes")
    steps = ck.number(f"{s}.num_steps", int, 0)
    if steps == 0:
        ck.number(f"{s}.num_epochs", (int, float), 0, lo_open=True)
    ck.choice(f"{s}.template", TEMPLATES)
    if data_kind == "llava":
        ck.path(f"{s}.data_file", PATH_HINTS.get((name, "data_file"), "a LLaVA-format JSON/JSONL file"), kind="file")
        ck.path(f"{s}.image_root", PATH_HINTS.get((name, "image_root"), "the folder its image paths are relative to"),
                kind="dir")
    elif data_kind == "synthetic":
        ck.choice(f"{s}.synthetic_split", SYNTHETIC_SPLITS)


def validate(config, num_devices: int, num_processes: int = 1, source: str = "the config") -> None:
    """Raise `ConfigError` listing every problem of `config` (an ml_collections ConfigDict) for a run
    on `num_devices` devices in `num_processes` processes. Returns None when the config is sound."""
    ck = _Checker(config)
    run = ck.get("run", (tuple, list))
    if run is not None:
        run = split_parts(run)
        bad = [r for r in run if r not in STAGES]
        if bad or not run:
            ck.bad("run", f"{bad or 'empty'}: put stages from {', '.join(STAGES)} in this order")
        elif list(run) != sorted(set(run), key=STAGES.index):
            ck.bad("run", f"{run}: stages must be unique and in the order {', '.join(STAGES)}")
        run = tuple(run)
    run = run or ()
    ck.number("seed", int, 0)
    sizes = [ck.get(f"mesh.{a}", int) for a in ("data", "fsdp", "tensor")]
    batch_shards = None
    if None not in sizes:
        resolved = resolve_mesh(*sizes, num_devices)
        if resolved is None:
            ck.bad("mesh", f"data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} cannot cover the {num_devices} "
                           f"devices; put sizes whose product is {num_devices} (one of them may be -1)")
        else:
            batch_shards = resolved[0] * resolved[1]
    data_kind = ck.choice("data.kind", DATA_KINDS)
    _check_model(ck, data_kind)
    ck.number("data.max_len", int, 1)
    buckets = ck.get("data.bucket_lengths", (tuple, list))
    if buckets is not None and (not all(isinstance(b, int) and b > 0 for b in buckets)):
        ck.bad("data.bucket_lengths", f"{buckets}: put positive sequence lengths, e.g. (512, 1024, 2048)")
    ck.number("data.num_workers", int, 0)
    ck.choice("data.resize_mode", ("resize", "pad"))
    ck.choice("data.on_bad_record", ("skip", "raise"))
    if data_kind == "synthetic":
        d = ck.get("data.synthetic.dir", str)
        if d and os.path.exists(d) and not os.path.isfile(os.path.join(d, "info.json")):
            ck.bad("data.synthetic.dir", f"{d!r} exists but holds no synthetic set (info.json); put an empty or "
                                         f"new folder (it is generated there) or leave it '' (WORKDIR/synthetic)")
        for f in ("num_train", "num_test", "image_size", "questions_per_image"):
            ck.number(f"data.synthetic.{f}", int, 1)
        ck.number("data.synthetic.seed", int, 0)
        from vlm_spatial.data.synthetic import FAMILIES

        fams = ck.get("data.synthetic.families", (tuple, list))
        if fams is not None:
            bad = [f for f in split_parts(fams) if f not in FAMILIES]
            if bad or not split_parts(fams):
                ck.bad("data.synthetic.families", f"{bad or 'empty'}: put a tuple of {', '.join(FAMILIES)}")
    for name in TRAIN_STAGES:
        if name in run:
            _check_stage(ck, name, data_kind, batch_shards, num_processes)
    if "eval" in run:
        from vlm_spatial.evaluation.benchmarks import list_benchmarks

        names = ck.get("eval.benchmarks", (tuple, list))
        if names is not None:
            names = split_parts(names)
            known = list_benchmarks()
            bad = [b for b in names if b.lower() not in known]
            if bad or not names:
                ck.bad("eval.benchmarks", f"{bad or 'empty'}: put a tuple of {', '.join(known)}")
        if data_kind == "llava":
            ck.path("eval.data_root", "the folder with one sub-folder per benchmark "
                                      "(files listed in vlm_spatial/evaluation/benchmarks/<name>.py)", kind="dir")
        ck.number("eval.batch_size", int, 1)
        ck.number("eval.limit", int, 0)
        from vlm_spatial.evaluation.rules import RULE_SETS

        ck.choice("eval.rules", RULE_SETS)
    ck.number("checkpoint.save_every", int, 1)
    ck.number("checkpoint.keep", int, 1)
    ck.get("checkpoint.async_save", bool)
    ck.get("log.tensorboard", bool)
    ck.get("log.progress", bool)
    if ck.problems:
        raise ConfigError(ck.problems, source)
