"""A training stage's data: the grain pipeline the config asks for, and the stage's step count.

`data.kind='llava'` reads the stage's LLaVA JSON (`stages.<name>.data_file`, `image_root`) with the
tokenizer of the initial checkpoint; `data.kind='synthetic'` reads the built-in synthetic spatial
set, generating it first (`ensure_synthetic`) when its folder holds none.
"""
from __future__ import annotations

import json
import math
import os

import jax

from vlm_spatial.config_check import split_parts
from vlm_spatial.api import image_config_for
from vlm_spatial.models.vlm import VLMConfig


def synthetic_dir(config, workdir: str) -> str:
    """Folder of the synthetic set: `data.synthetic.dir`, or `WORKDIR/synthetic`."""
    return os.path.abspath(config.data.synthetic.dir or os.path.join(workdir, "synthetic"))


def ensure_synthetic(config, workdir: str, log=print) -> str:
    """Generate the synthetic set (train/pretrain/test splits + tokenizer) unless its folder has
    one (`info.json`). Process 0 writes, the others wait. Returns the folder."""
    from jax.experimental import multihost_utils

    out = synthetic_dir(config, workdir)
    s = config.data.synthetic
    want = dict(num_train=s.num_train, num_test=s.num_test, seed=s.seed, image_size=s.image_size,
                families=list(split_parts(s.families)), questions_per_image=s.questions_per_image)
    info_path = os.path.join(out, "info.json")
    if not os.path.isfile(info_path) and jax.process_index() == 0:
        from vlm_spatial.data.synthetic import generate

        log(f"generating the synthetic spatial set in {out} ({s.num_train} train / {s.num_test} test images)")
        generate(out, num_val=0, **want)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic set written")
    with open(info_path) as f:
        info = json.load(f)
    differ = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
    if differ:
        raise ValueError(f"data.synthetic.dir {out} holds a set made with other settings "
                         f"({', '.join(f'{k}={a!r}, config {b!r}' for k, (a, b) in differ.items())}); "
                         f"point data.synthetic.dir at a new folder or set data.synthetic.* to match")
    return out


def tokenizer_dir(config, synth_dir: str | None) -> str:
    """The tokenizer the data is encoded with: the synthetic set's, or the initial checkpoint's."""
    if config.data.kind == "synthetic":
        return os.path.join(synth_dir, "tokenizer")
    return os.path.join(os.path.expanduser(config.model.init_checkpoint), "tokenizer")


def stage_files(config, stage: str, synth_dir: str | None) -> tuple[str, str]:
    """(LLaVA JSON file, image root) of a training stage."""
    sc = config.stages[stage]
    if config.data.kind == "synthetic":
        return os.path.join(synth_dir, f"{sc.synthetic_split}.json"), synth_dir
    return os.path.expanduser(sc.data_file), os.path.expanduser(sc.image_root)


def count_records(data_file: str) -> int:
    """Records in a LLaVA JSON/JSONL file (indexes it once)."""
    from vlm_spatial.data.sources import LlavaJsonSource

    return len(LlavaJsonSource([data_file], [None]))


def stage_num_steps(stage_cfg, num_records: int) -> int:
    """`num_steps`, or (when 0) `num_epochs` passes over `num_records` at `global_batch` rows a step."""
    if stage_cfg.num_steps:
        return int(stage_cfg.num_steps)
    return max(1, int(math.floor(stage_cfg.num_epochs * num_records / stage_cfg.global_batch)))


def stage_pipeline(config, stage: str, vlm_cfg: VLMConfig, tok_dir: str, synth_dir: str | None):
    """The stage's checkpointable batch iterator (`vlm_spatial.data.pipeline.PipelineIterator`),
    yielding `global_batch / process_count` rows per step, repeating over epochs."""
    from vlm_spatial.data.pipeline import build_train_pipeline

    sc = config.stages[stage]
    data_file, image_root = stage_files(config, stage, synth_dir)
    return build_train_pipeline(
        data_files=[data_file], image_roots=[image_root], tokenizer_dir=tok_dir, template=sc.template,
        max_len=config.data.max_len, bucket_lengths=tuple(config.data.bucket_lengths),
        global_batch_size=sc.global_batch, seed=config.seed, num_workers=config.data.num_workers,
        image=image_config_for(vlm_cfg, config.data.resize_mode), num_image_tokens=vlm_cfg.num_image_tokens,
        image_token_id=vlm_cfg.image_token_id, num_epochs=None, on_bad_record=config.data.on_bad_record,
    )


def tokenizer_vocab(tok_dir: str) -> tuple[int, int]:
    """(vocabulary size, id of `<image>`) of a tokenizer folder."""
    from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer

    tok = load_tokenizer(tok_dir)
    return len(tok), int(tok.convert_tokens_to_ids(IMAGE_MARKER))

