"""Shared parts of the paper's eight variant configs (`configs/<variant>.py`).

`paper(variant, vision, rope2d)` is the paper's recipe (LLaVA-1.5 two-stage training of a Vicuna-7B
v1.5 LLaVA with the variant's image encoder, 256x256 images, 8 x A40); `tiny(config)` swaps in a tiny
model built from scratch and the built-in synthetic spatial set so the same variant runs on a laptop
CPU in minutes. Every field is overridable from the command line, e.g.
`--config.stages.finetune.lr=1e-5` or `--config.model.init_checkpoint=/ckpts/aimv2_2drope`.

Fields (turned into the typed, frozen `vlm_spatial.runconfig.RunConfig` and checked, all problems at
once, before anything heavy starts; a field set on the command line that the run does not read is
refused):

  variant              the paper variant (the eval report compares with its row of the paper's tables)
  run                  stages in order: 'pretrain', 'finetune' (training) and 'eval'
  seed                 model init (random init only) and data order
  mesh.{data,fsdp,tensor}  device mesh sizes (one may be -1 = the rest of the devices)
  model.init_checkpoint    checkpoint written by `python -m vlm_spatial.convert assemble`
                           (encoder + LM + fresh projector + tokenizer); stage 1 starts from it
  model.random_init        build the model from the presets below with random weights instead
  model.vision / decoder   preset names (`vlm_spatial.models.presets`): the architecture for a random
                           init; with a checkpoint, the checkpoint's encoder must be of this family
  model.*_overrides        preset fields replaced for a random init (the tiny model's sizes)
  The knobs below apply alike to a random init and to a checkpoint, and are recorded in every
  checkpoint's model_config.json (`vlm_spatial.load` restores them):
  model.rope2d, rope2d_theta   2D rotary embedding in the encoder's attention (the paper's variants), its base
  model.rope2d_layout      'axial' (the paper's) | 'pixtral' | 'dinov3' | 'mixed' (RoPE-Mixed, learned) | ''
                           (the encoder's own); see vlm_spatial/models/positions/rope2d.py
  model.rope2d_layers      encoder layers that rotate q and k, e.g. "(0, 1)"; None = every layer
  model.keep_abs_pos_emb   with rope2d: keep the learned absolute position table (False drops it)
  model.image_size         input side in pixels (the paper resizes every image to 256x256); a learned
                           position grid is resized (bicubic) to it, a NaFlex encoder gets that many
                           pixels' worth of patches
  model.vision_feature_layer   encoder hidden state the projector reads (-2: LLaVA's penultimate layer)
  model.vision_feature_select  'default' (drop CLS) | 'full' (every token) | '' (the family's: CLIP drops CLS)
  model.connector          projector kind: 'mlp2x_gelu' (LLaVA-1.5) | 'linear' | 'pool2d' | 'c_abstractor'
                           | 'resampler' (vlm_spatial/models/connectors/); with a checkpoint whose projector
                           is of another kind or settings, a fresh one is initialised (seed)
  model.connector_pool, connector_grid, connector_num_queries, connector_depth   its settings: pool2d's k,
                           c_abstractor's output side, resampler's queries, blocks (c_abstractor, resampler)
  model.dtype / param_dtype    compute dtype (bf16) / master weights (fp32); the loss is fp32
  model.remat_policy       'none' | 'dots' | 'full' (activation recomputation in both towers)
  model.layer_unroll       layers per iteration of the layer scans (0 = the backend's measured default)
  data.kind                'llava' (LLaVA JSON + image folders, per stage below) | 'synthetic'
  data.synthetic.*         the synthetic set (question families, sizes): generated into `dir`
                           (default WORKDIR/synthetic) if absent
  data.max_len, bucket_lengths   longest sequence; the padded lengths a batch may take
  data.num_workers         image-decoding processes; data.resize_mode 'resize' | 'pad' (LLaVA's
                           expand-to-square); data.on_bad_record 'skip' | 'raise'
  data.max_bad_record_ratio   'skip' stops with the reasons when more than this share of the last
                           1000 records read (at most an epoch) is bad
  data.allow_image_paths_outside_root   read image paths that are absolute or leave the image root
  stages.<name>.trainable_parts  any of 'projector', 'lm', 'vision'; the rest is frozen (no optimizer
                           state). Tuples from the command line: "('projector','lm')" or projector,lm
  stages.<name>.lr, schedule, warmup_ratio, weight_decay, max_grad_norm   AdamW + schedule
  stages.<name>.global_batch, grad_accum_steps   rows per optimizer step; per-device micro-batch is
                           global_batch / (grad_accum_steps * data * fsdp)
  stages.<name>.num_steps  optimizer steps; 0 = num_epochs passes over the stage's data
  stages.<name>.template   'plain' (stage 1 captions) | 'vicuna_v1' (conversations)
  stages.<name>.data_file, image_root   LLaVA JSON and its image folder (data.kind='llava');
                           synthetic_split names the synthetic file instead (data.kind='synthetic')
  eval.benchmarks, data_root, batch_size, limit   benchmarks run on the last stage's checkpoint
  eval.rules               scoring rule set: the harness revision the numbers follow
                           (vlm_spatial/evaluation/rules.py; vlmevalkit-2025.09 = the paper's)
  checkpoint.save_every, keep, async_save   Orbax saves every N steps and at stage end, keep K
  log.tensorboard, progress   TensorBoard event files; the progress bar
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vlm_spatial.models import families

# The paper's two-stage recipe (LLaVA-1.5; paper section 4: 8 x A40, 256x256 images).
PAPER_BENCHMARKS = ("cvbench", "mmvp", "vsr", "topviewrs", "countbenchqa", "tallyqa", "gqa",
                    "mmmu", "mme", "ccbench", "seedbench")


def _stage(**kw) -> dict:
    base = dict(
        trainable_parts=("projector",),
        lr=1e-3,
        schedule="cosine",
        warmup_ratio=0.03,
        weight_decay=0.0,
        max_grad_norm=1.0,
        global_batch=256,
        grad_accum_steps=1,
        num_steps=0,
        num_epochs=1.0,
        template="plain",
        data_file="",
        image_root="",
        synthetic_split="",
    )
    base.update(kw)
    return base


def paper(variant: str, vision: str, rope2d: bool) -> ml_collections.ConfigDict:
    """The paper's recipe for one variant: `vision` is the encoder preset, `rope2d` the 2D-RoPE switch.

    Paths the user must provide are left empty; `vlm_spatial.runconfig.parse` names each one.
    """
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.run = ("pretrain", "finetune", "eval")
    c.seed = 0
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.model = dict(
        init_checkpoint="",
        random_init=False,
        vision=vision,
        decoder="vicuna-7b-v1.5",
        vision_overrides={},
        decoder_overrides={},
        rope2d=rope2d,
        rope2d_layout="",  # the encoder's own: axial (DINOv3: dinov3)
        rope2d_theta=100.0,
        rope2d_layers=config_dict.placeholder(tuple),  # None = every encoder layer
        keep_abs_pos_emb=True,
        image_size=256,
        vision_feature_layer=-2,
        vision_feature_select="",  # the family's: CLIP drops CLS, the others keep every token
        connector="mlp2x_gelu",
        connector_pool=2,  # pool2d: k x k
        connector_grid=12,  # c_abstractor: a 12 x 12 grid (Honeybee's 144 tokens)
        connector_num_queries=144,  # resampler: as many tokens as the C-Abstractor's
        connector_depth=3,  # c_abstractor: ResNet blocks per stage (Honeybee's); resampler: blocks
        dtype="bfloat16",
        param_dtype="float32",
        remat_policy="full",
        layer_unroll=0,
    )
    c.data = dict(
        kind="llava",
        max_len=2048,
        bucket_lengths=(512, 1024, 2048),
        num_workers=8,
        resize_mode="resize",
        on_bad_record="skip",  # "skip": count and log the record id; "raise": stop at the first bad record
        max_bad_record_ratio=0.1,  # "skip" stops the run when more than 10% of the last 1000 records are bad
        allow_image_paths_outside_root=False,  # image paths that are absolute or climb out with '..' are bad records
        synthetic=dict(dir="", num_train=4000, num_test=500, image_size=32, questions_per_image=1, seed=0,
                       families=("left_right", "above_below", "closer", "count", "relation_mc")),
    )
    c.stages = dict(
        # stage 1: projector only on LLaVA-Pretrain (558k captions), per-device batch 32 on 8 GPUs
        pretrain=_stage(trainable_parts=("projector",), lr=1e-3, global_batch=256, template="plain"),
        # stage 2: LLaVA-1.5 "full" fine-tune (projector + LM; the vision tower stays frozen as in
        # LLaVA-1.5) on llava_v1_5_mix665k, per-device batch 16 on 8 GPUs
        finetune=_stage(trainable_parts=("projector", "lm"), lr=2e-5, global_batch=128, template="vicuna_v1"),
    )
    c.eval = dict(benchmarks=PAPER_BENCHMARKS, data_root="", batch_size=8, limit=0, rules="vlmevalkit-2025.09")
    c.checkpoint = dict(save_every=250, keep=2, async_save=True)
    c.log = dict(tensorboard=True, progress=True)
    return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same variant, tiny and from scratch, on the synthetic spatial set (a laptop CPU job).

    The encoder is the variant family's tiny preset (same switches, 2D-RoPE as the variant) and the
    decoder a tiny LLaMA. Nothing is pretrained, so unlike the paper's recipe every part trains in
    both stages: stage 1 grounds the towers on captions that name each object and its position,
    stage 2 answers a left/right or above/below question per image.
    """
    c.model.random_init = True
    c.model.vision = families.tiny_preset(c.model.vision)
    c.model.decoder = "tiny-llama"
    c.model.vision_overrides = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, patch_size=8)
    c.model.decoder_overrides = dict(hidden_size=128, intermediate_size=256, num_layers=3, num_heads=8,
                                     num_kv_heads=8, head_dim=16, max_position_embeddings=256)
    c.model.image_size = 32
    c.model.connector_grid, c.model.connector_num_queries, c.model.connector_depth = 2, 4, 1
    c.model.dtype = "float32"  # CPU: bf16 matmuls are emulated and slower
    c.model.remat_policy = "none"
    c.data.kind = "synthetic"
    c.data.max_len = 72
    c.data.bucket_lengths = (32, 72)
    c.data.num_workers = 0
    c.data.synthetic = dict(dir="", num_train=8000, num_test=500, image_size=32, questions_per_image=1, seed=0,
                            families=("left_right", "above_below"))
    all_parts = ("projector", "lm", "vision")
    c.stages.pretrain = _stage(trainable_parts=all_parts, lr=1e-3, global_batch=32, num_steps=1000,
                               template="plain", synthetic_split="pretrain")
    c.stages.finetune = _stage(trainable_parts=all_parts, lr=1e-3, global_batch=32, num_steps=1200,
                               template="vicuna_v1", synthetic_split="train")
    c.eval = dict(benchmarks=("synthetic",), data_root="", batch_size=100, limit=0, rules="vlmevalkit-2025.09")
    c.checkpoint = dict(save_every=250, keep=2, async_save=True)
    return c


def variant_config(variant: str, vision: str, rope2d: bool, arg: str | None) -> ml_collections.ConfigDict:
    """`get_config` of every variant file: the paper recipe, or with `arg='tiny'` the tiny job."""
    c = paper(variant, vision, rope2d)
    if arg in (None, ""):
        return c
    if arg == "tiny":
        return tiny(c)
    raise ValueError(f"configs/{variant}.py takes no argument or ':tiny', got {arg!r}")
