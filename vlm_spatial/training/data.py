"""A training stage's data: the grain pipeline the run config (`runconfig.RunConfig`) asks for, and
the stage's step count.

`data.kind='llava'` reads the stage's LLaVA JSON (`stages.<name>.data_file`, `image_root`) with the
tokenizer of the initial checkpoint; `data.kind='synthetic'` reads the built-in synthetic spatial
set, generating it first (`ensure_synthetic`) when its folder holds none.
"""
from __future__ import annotations

import json
import math
import os

import jax

from vlm_spatial.api import image_config_for
from vlm_spatial.models.vlm import VLMConfig
from vlm_spatial.runconfig import RunConfig, StageConfig


def synthetic_dir(run: RunConfig, workdir: str) -> str:
    """Folder of the synthetic set: `data.synthetic.dir`, or `WORKDIR/synthetic`."""
    return os.path.abspath(os.path.expanduser(run.data.synthetic.dir) or os.path.join(workdir, "synthetic"))


def synthetic_settings(run: RunConfig) -> dict:
    """The `data.synthetic.generate` settings of the run's synthetic set (what its info.json records)."""
    s = run.data.synthetic
    return dict(num_train=s.num_train, num_test=s.num_test, seed=s.seed, image_size=s.image_size,
                families=list(s.families), questions_per_image=s.questions_per_image)


def ensure_synthetic(run: RunConfig, workdir: str, log=print) -> str:
    """Generate the synthetic set (train/pretrain/test splits + tokenizer) unless its folder has
    one (`info.json`). Process 0 writes, the others wait. Returns the folder."""
    from jax.experimental import multihost_utils

    out = synthetic_dir(run, workdir)
    s = run.data.synthetic
    want = synthetic_settings(run)
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


def tokenizer_dir(run: RunConfig, synth_dir: str | None) -> str:
    """The tokenizer the data is encoded with: the synthetic set's, or the initial checkpoint's."""
    if run.data.kind == "synthetic":
        return os.path.join(synth_dir, "tokenizer")
    return os.path.join(os.path.expanduser(run.model.init_checkpoint), "tokenizer")


def stage_files(run: RunConfig, stage: str, synth_dir: str | None) -> tuple[str, str]:
    """(LLaVA JSON file, image root) of a training stage."""
    sc = run.stages[stage]
    if run.data.kind == "synthetic":
        return os.path.join(synth_dir, f"{sc.synthetic_split}.json"), synth_dir
    return os.path.expanduser(sc.data_file), os.path.expanduser(sc.image_root)


def count_records(data_file: str) -> int:
    """Records in a LLaVA JSON/JSONL file (indexes it once)."""
    from vlm_spatial.data.sources import LlavaJsonSource

    return len(LlavaJsonSource([data_file], [None]))


def stage_num_steps(stage_cfg: StageConfig, num_records: int) -> int:
    """`num_steps`, or (when 0) `num_epochs` passes over `num_records` at `global_batch` rows a step."""
    if stage_cfg.num_steps:
        return int(stage_cfg.num_steps)
    return max(1, int(math.floor(stage_cfg.num_epochs * num_records / stage_cfg.global_batch)))


def pipeline_args(run: RunConfig, stage: str, vlm_cfg: VLMConfig, tok_dir: str, synth_dir: str | None) -> dict:
    """The keyword arguments of `data.pipeline.build_train_pipeline` for a training stage of `run`
    (model `vlm_cfg`, tokenizer folder `tok_dir`, synthetic set folder `synth_dir` or None)."""
    sc, d = run.stages[stage], run.data
    data_file, image_root = stage_files(run, stage, synth_dir)
    return dict(
        data_files=[data_file], image_roots=[image_root], tokenizer_dir=tok_dir, template=sc.template,
        max_len=d.max_len, bucket_lengths=d.bucket_lengths, global_batch_size=sc.global_batch, seed=run.seed,
        num_workers=d.num_workers, image=image_config_for(vlm_cfg, d.resize_mode),
        num_image_tokens=vlm_cfg.num_image_tokens, image_token_id=vlm_cfg.image_token_id, num_epochs=None,
        on_bad_record=d.on_bad_record, max_bad_record_ratio=d.max_bad_record_ratio,
        allow_image_paths_outside_root=d.allow_image_paths_outside_root,
    )


def stage_pipeline(run: RunConfig, stage: str, vlm_cfg: VLMConfig, tok_dir: str, synth_dir: str | None):
    """The stage's checkpointable batch iterator (`vlm_spatial.data.pipeline.PipelineIterator`),
    yielding `global_batch / process_count` rows per step, repeating over epochs."""
    from vlm_spatial.data.pipeline import build_train_pipeline

    return build_train_pipeline(**pipeline_args(run, stage, vlm_cfg, tok_dir, synth_dir))


def tokenizer_vocab(tok_dir: str) -> tuple[int, int]:
    """(vocabulary size, id of `<image>`) of a tokenizer folder."""
    from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer

    tok = load_tokenizer(tok_dir)
    return len(tok), int(tok.convert_tokens_to_ids(IMAGE_MARKER))

