"""The run config: `configs/*.py` (an ml_collections ConfigDict, command-line overrides applied) as
typed, frozen dataclasses, every problem found at once, and the one place a run's `VLMConfig` is built.

    run = runconfig.parse(config, jax.device_count(), jax.process_count(), overrides=..., source=...)
    vlm_cfg = run.model.vlm_config(vocab_size=V, image_token_id=I)              # random init
    vlm_cfg = run.model.vlm_config(checkpoint=checkpoint.read_config(path))     # from a checkpoint

`parse` converts each section by its dataclass's field types (an unknown, missing or mistyped field
is a problem), each dataclass checks its own values in `__post_init__` (choices come from the modules
that own them: presets, templates, schedules, trainable parts, benchmarks, ...), `RunConfig` checks
what spans sections, and the `check_*` methods what needs the machine: the mesh against the device
count, batch divisibility and every path (the initial checkpoint is read and the run's model built
from it, so a knob the checkpoint cannot take is named before anything heavy starts). A field the run
does not read (`RunConfig.ignored`) is a problem when it was set explicitly (`overrides`: the
command line's `--config.<field>` flags). All problems are raised together in one `ConfigError`, each
line naming the `--config.<field>` to fix.

The model knobs (`ModelConfig`: 2D-RoPE on/off, layout, theta, layers, the learned absolute table,
image size, feature layer and selection, connector and its settings, dtypes, remat) are laid over the base architecture by
`ModelConfig.vlm_config` in the same way on both paths: the base is the presets `model.vision` /
`model.decoder` with `model.*_overrides` for a random init, or the checkpoint's `model_config.json`.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import os
import re
import types
import typing
from typing import Any, Callable, Iterable, Mapping

from vlm_spatial import checkpoint, parallel
from vlm_spatial.models import connectors, families, layers, positions, presets
from vlm_spatial.models.decoder import DECODER_PRESETS, DecoderConfig
from vlm_spatial.models.families import VISION_PRESETS
from vlm_spatial.models.vision import VisionConfig
from vlm_spatial.models.vlm import FEATURE_SELECT, VLMConfig
from vlm_spatial.training.optimizer import PARTS, SCHEDULES

STAGES = ("pretrain", "finetune", "eval")
TRAIN_STAGES = ("pretrain", "finetune")
DATA_KINDS = ("llava", "synthetic")
SYNTHETIC_SPLITS = ("pretrain", "train")  # the synthetic set's training files (stage 1 captions, stage 2 questions)
DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
# VisionConfig / DecoderConfig fields the run sets from its own model.<field> (never through *_overrides)
VISION_KNOBS = ("rope2d", "rope2d_layout", "rope2d_theta", "rope2d_layers", "keep_abs_pos_emb", "image_size", "dtype",
                "param_dtype", "remat_policy", "layer_unroll")
DECODER_KNOBS = ("dtype", "param_dtype", "remat_policy", "layer_unroll")
DECODER_FROM_TOKENIZER = ("vocab_size",)  # set from the tokenizer the data is encoded with

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
        self.problems = list(problems)
        lines = "\n".join(f"  --config.{p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


# ----------------------------------------------------------------------------- field checks
def _field(*, choices: Callable[[], Iterable] | None = None, each: Callable[[], Iterable] | None = None,
           lo=None, lo_open: bool = False, hi=None, hi_open: bool = False, hint: str = "",
           check: Callable[[Any], str | None] | None = None):
    """A dataclass field (no default: every value comes from the config file) with the checks of
    `_check_field`: `choices` / `each` (the allowed value / tuple entries, from their owner), a range,
    or `check(value) -> message | None`."""
    return dataclasses.field(metadata=dict(choices=choices, each=each, lo=lo, lo_open=lo_open, hi=hi,
                                           hi_open=hi_open, hint=hint, check=check))


def _check_field(f: dataclasses.Field, v) -> list[str]:
    """Problems ('field: message') of value `v` of field `f` against its `_field` metadata."""
    md, problems = f.metadata, []
    if md.get("choices") is not None:
        allowed = tuple(md["choices"]())
        if v not in allowed:
            problems.append(f"{f.name}: {v!r} is not one of {', '.join(map(repr, allowed))}")
    if md.get("each") is not None:
        allowed = tuple(md["each"]())
        bad = [x for x in v if x not in allowed]
        if bad or not v:
            problems.append(f"{f.name}: {bad or 'empty'}: put a tuple of {', '.join(allowed)}{md['hint']}")
    lo, hi = md.get("lo"), md.get("hi")
    if lo is not None or hi is not None:
        low = lo is not None and (v <= lo if md["lo_open"] else v < lo)
        high = hi is not None and (v >= hi if md["hi_open"] else v > hi)
        if low or high:
            lo_s = "" if lo is None else f"{'>' if md['lo_open'] else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if md['hi_open'] else '<='} {hi}"
            problems.append(f"{f.name}: {v} is out of range; put a value {' and '.join(s for s in (lo_s, hi_s) if s)}")
    if md.get("check") is not None and not problems:
        msg = md["check"](v)
        problems += [f"{f.name}: {msg}"] if msg else []
    return problems


def _check_fields(obj) -> list[str]:
    """Problems of every field of dataclass instance `obj` (see `_check_field`)."""
    return [p for f in dataclasses.fields(obj) for p in _check_field(f, getattr(obj, f.name))]


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _under(prefix: str, problems: Iterable[str]) -> list[str]:
    return [f"{prefix}.{p}" for p in problems]


def _path_problem(field: str, value: str, what: str, kind: str, inside: tuple[str, ...] = ()) -> str | None:
    """'field: ...' when `value` is empty or not an existing `kind` ('file' | 'dir') holding `inside`."""
    if not value:
        return f"{field}: not set; put {what} there"
    p = os.path.expanduser(value)
    if not (os.path.isfile(p) if kind == "file" else os.path.isdir(p)):
        return f"{field}: {value!r} does not exist (or is not a {kind}); put {what} there"
    missing = [e for e in inside if not os.path.exists(os.path.join(p, e))]
    if missing:
        return f"{field}: {value!r} has no {', '.join(missing)}; put {what} there"
    return None


def _unknown_benchmarks(names: tuple[str, ...]) -> str | None:
    """What is wrong with benchmark `names` (registry names, any case), or None."""
    from vlm_spatial.evaluation.benchmarks import list_benchmarks

    known = list_benchmarks()
    bad = [b for b in names if b.lower() not in known]
    return f"{bad or 'empty'}: put a tuple of {', '.join(known)}" if bad or not names else None


def _rule_sets() -> tuple[str, ...]:
    from vlm_spatial.evaluation.rules import RULE_SETS

    return tuple(RULE_SETS)


def _run_order(run: tuple[str, ...]) -> str | None:
    if list(run) != sorted(set(run), key=STAGES.index):
        return f"{run}: stages must be unique and in the order {', '.join(STAGES)}"
    return None


def _synthetic_families() -> tuple[str, ...]:
    from vlm_spatial.data.synthetic import FAMILIES

    return FAMILIES


def _templates() -> tuple[str, ...]:
    from vlm_spatial.data.templates import TEMPLATES

    return TEMPLATES


def _resize_modes() -> tuple[str, ...]:
    from vlm_spatial.data.preprocess import RESIZE_MODES

    return RESIZE_MODES


def _bad_record_policies() -> tuple[str, ...]:
    from vlm_spatial.data.pipeline import BAD_RECORD_POLICIES

    return BAD_RECORD_POLICIES


# ----------------------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one may be -1 (the rest of the devices). Sized by `parallel.mesh_sizes`."""

    data: int
    fsdp: int
    tensor: int

    def sizes(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) over `num_devices`; ValueError when they cannot cover them."""
        return parallel.mesh_sizes(self.data, self.fsdp, self.tensor, num_devices)


_VISION_FIELD = re.compile(r"VisionConfig\.(\w+)")
_DECODER_FIELD = re.compile(r"DecoderConfig\.(\w+)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model a run trains: where it starts (`init_checkpoint` or a `random_init` of the presets
    `vision`/`decoder` + `*_overrides`) and the knobs laid over it on either path (`vlm_config`)."""

    init_checkpoint: str
    random_init: bool
    vision: str = _field(choices=lambda: sorted(VISION_PRESETS))
    decoder: str = _field(choices=lambda: sorted(DECODER_PRESETS))
    vision_overrides: Mapping[str, Any] = _field()
    decoder_overrides: Mapping[str, Any] = _field()
    rope2d: bool = _field()
    rope2d_layout: str = _field(choices=lambda: ("",) + tuple(positions.ROPE2D))  # '' = the encoder's own
    rope2d_theta: float = _field(lo=0, lo_open=True)
    rope2d_layers: tuple[int, ...] | None = _field()  # None = every encoder layer
    keep_abs_pos_emb: bool = _field()  # with rope2d: still add the learned absolute table
    image_size: int = _field(lo=1)
    vision_feature_layer: int = _field()
    vision_feature_select: str = _field(choices=lambda: ("",) + FEATURE_SELECT)  # '' = the family's
    connector: str = _field(choices=connectors.names)
    connector_pool: int = _field(lo=1)  # the connector settings (connectors.SETTINGS), each read by some kinds
    connector_grid: int = _field(lo=1)
    connector_num_queries: int = _field(lo=1)
    connector_depth: int = _field(lo=1)
    dtype: str = _field(choices=lambda: DTYPES)
    param_dtype: str = _field(choices=lambda: PARAM_DTYPES)
    remat_policy: str = _field(choices=lambda: tuple(layers.REMAT_POLICIES))
    layer_unroll: int = _field(lo=0)  # layers per scan iteration in both towers; 0 = the backend's default

    def __post_init__(self):
        for name in ("vision_overrides", "decoder_overrides"):
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))
        problems = _check_fields(self)
        for name, cls, knobs in (("vision_overrides", VisionConfig, VISION_KNOBS),
                                 ("decoder_overrides", DecoderConfig, DECODER_KNOBS + DECODER_FROM_TOKENIZER)):
            known = {f.name for f in dataclasses.fields(cls)}
            for key in getattr(self, name):
                if key in DECODER_FROM_TOKENIZER and name == "decoder_overrides":
                    problems.append(f"{name}.{key}: set by the tokenizer the data is encoded with; remove it")
                elif key in knobs:
                    problems.append(f"{name}.{key}: a run knob; set model.{key} instead (it applies to a "
                                    f"random init and a checkpoint alike)")
                elif key not in known:
                    problems.append(f"{name}.{key}: not a field of {cls.__name__}; one of {', '.join(sorted(known))}")
        if not problems and self.random_init:
            try:
                self.vlm_config()
            except ConfigError as e:
                problems += e.problems
        _raise_if(problems)

    def vlm_config(self, checkpoint: VLMConfig | None = None, *, vocab_size: int | None = None,
                   image_token_id: int | None = None) -> VLMConfig:
        """THE `VLMConfig` of a run: the base architecture (`checkpoint`'s, or the presets with the
        overrides, vocabulary `vocab_size` and `<image>` id `image_token_id`, default the preset's
        and its last id) with this config's knobs laid over it. A fixed-resolution encoder's learned
        grid follows `image_size` (resized when the checkpoint's differs); a NaFlex encoder gets that
        many pixels' worth of patches. Raises ConfigError naming the model field to fix."""
        where = "init_checkpoint" if checkpoint is not None else None
        if checkpoint is None:
            try:
                base = presets.vlm_config(self.vision, self.decoder, vocab_size=vocab_size,
                                          image_token_id=image_token_id, vision_overrides=dict(self.vision_overrides),
                                          decoder_overrides=dict(self.decoder_overrides))
            except (ValueError, TypeError) as e:
                field = "decoder_overrides" if _DECODER_FIELD.search(str(e)) else "vision_overrides"
                raise ConfigError([f"{field}: {e}"]) from None
        else:
            base = checkpoint
        try:
            knobs = {k: getattr(self, k) for k in VISION_KNOBS if k != "image_size" and getattr(self, k) != ""}
            vision = dataclasses.replace(base.vision, **knobs)
        except (ValueError, TypeError) as e:
            m = _VISION_FIELD.search(str(e))
            knob = m.group(1) if m and m.group(1) in VISION_KNOBS else (where or "vision_overrides")
            raise ConfigError([f"{knob}: {e}"]) from None
        vision = _at_image_size(vision, self.image_size)
        layers_out = vision.num_layers + 1  # hidden_states: embeddings, then every layer
        if not -layers_out <= self.vision_feature_layer < layers_out:
            raise ConfigError([f"vision_feature_layer: {self.vision_feature_layer} is not an index of the encoder's "
                               f"{layers_out} hidden states; put a value in [-{layers_out}, {layers_out - 1}]"])
        decoder = dataclasses.replace(base.decoder, **{k: getattr(self, k) for k in DECODER_KNOBS})
        select = self.vision_feature_select or families.get(vision.family).feature_select
        settings = {f"projector_{k}": getattr(self, f"connector_{k}") for k in connectors.SETTINGS}
        try:
            return dataclasses.replace(base, vision=vision, decoder=decoder, projector=self.connector,
                                       vision_feature_layer=self.vision_feature_layer, vision_feature_select=select,
                                       **settings)
        except ValueError as e:
            named = [k for k in connectors.reads(self.connector) if f"{k}=" in str(e)]
            raise ConfigError([f"connector{'_' + named[0] if named else ''}: {e}"]) from None

    def check_checkpoint(self, data_kind: str) -> list[str]:
        """Problems of the initial checkpoint (none for a random init): missing files, an encoder of
        another family than `model.vision`'s, and any knob the checkpoint cannot take."""
        if self.random_init:
            return []
        inside = ("model_config.json", "tokenizer") if data_kind == "llava" else ("model_config.json",)
        what = ASSEMBLE if data_kind == "llava" else f"{ASSEMBLE} (or set model.random_init=True)"
        bad = _path_problem("init_checkpoint", self.init_checkpoint, what, "dir", inside)
        if bad:
            return [bad]
        path = os.path.expanduser(self.init_checkpoint)
        try:
            ckpt = checkpoint.read_config(path)
        except (ValueError, TypeError, KeyError) as e:
            return [f"init_checkpoint: {path}/model_config.json is not a model config ({e}); put {ASSEMBLE} there"]
        family, want = ckpt.vision.family, VISION_PRESETS[self.vision].family
        if not families.accepts(want, family):
            return [f"init_checkpoint: {path!r} holds a {family} encoder but this variant's encoder is {want} "
                    f"(model.vision={self.vision!r}); assemble a {want} checkpoint"]
        try:
            run_vision = self.vlm_config(ckpt).vision
        except ConfigError as e:
            return e.problems
        if run_vision.pos_emb == "learned" and run_vision.uses_abs_pos_emb and not ckpt.vision.uses_abs_pos_emb:
            return [f"keep_abs_pos_emb: {path!r} has no learned position table (assembled with --no_abs_pos_emb); "
                    f"put False (with model.rope2d=True)"]
        return []


def _at_image_size(vision: VisionConfig, image_size: int) -> VisionConfig:
    """`vision` taking `image_size`-pixel inputs: a NaFlex encoder that many pixels' worth of
    patches, a fixed-resolution one a learned grid of its patch grid (resized from a checkpoint's)."""
    from vlm_spatial.convert.assemble import at_image_size

    try:
        vision = at_image_size(vision, image_size)
    except ValueError as e:
        raise ConfigError([f"image_size: {e}"]) from None
    return vision if vision.naflex else dataclasses.replace(vision, pos_grid=None)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The built-in synthetic spatial set (`vlm_spatial.data.synthetic`), generated into `dir`."""

    dir: str  # '' = WORKDIR/synthetic
    num_train: int = _field(lo=1)
    num_test: int = _field(lo=1)
    image_size: int = _field(lo=1)
    questions_per_image: int = _field(lo=1)
    seed: int = _field(lo=0)
    families: tuple[str, ...] = _field(each=_synthetic_families)

    def __post_init__(self):
        _raise_if(_check_fields(self))

    def check_paths(self) -> list[str]:
        """A `dir` that exists must hold a synthetic set (it is generated into a new or empty one)."""
        d = os.path.expanduser(self.dir)
        if d and os.path.exists(d) and not os.path.isfile(os.path.join(d, "info.json")):
            return [f"dir: {self.dir!r} exists but holds no synthetic set (info.json); put an empty or new folder "
                    f"(it is generated there) or leave it '' (WORKDIR/synthetic)"]
        return []


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training data comes from and how it is batched."""

    kind: str = _field(choices=lambda: DATA_KINDS)
    max_len: int = _field(lo=1)
    bucket_lengths: tuple[int, ...] = _field(check=lambda v: None if v and all(b > 0 for b in v) else
                                             f"{v}: put positive sequence lengths, e.g. (512, 1024, 2048)")
    num_workers: int = _field(lo=0)
    resize_mode: str = _field(choices=_resize_modes)
    on_bad_record: str = _field(choices=_bad_record_policies)
    # with on_bad_record='skip': stop when more than this share of a window of records is bad
    max_bad_record_ratio: float = _field(lo=0, hi=1, hi_open=True)
    allow_image_paths_outside_root: bool = _field()  # read absolute / '..' image paths
    synthetic: SyntheticConfig = _field()

    def __post_init__(self):
        _raise_if(_check_fields(self))


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage: the parts it trains, AdamW + schedule, batch, length and data."""

    trainable_parts: tuple[str, ...] = _field(each=lambda: tuple(PARTS), hint=", e.g. \"('projector','lm')\"")
    lr: float = _field(lo=0, lo_open=True)
    schedule: str = _field(choices=lambda: SCHEDULES)
    warmup_ratio: float = _field(lo=0, hi=1, hi_open=True)
    weight_decay: float = _field(lo=0)
    max_grad_norm: float = _field(lo=0)  # 0 = no clipping
    global_batch: int = _field(lo=1)
    grad_accum_steps: int = _field(lo=1)
    num_steps: int = _field(lo=0)  # 0 = num_epochs passes over the data
    num_epochs: float = _field(lo=0, lo_open=True)
    template: str = _field(choices=_templates)
    data_file: str = _field()  # data.kind='llava'
    image_root: str = _field()  # data.kind='llava'
    synthetic_split: str = _field(choices=lambda: ("",) + SYNTHETIC_SPLITS)  # data.kind='synthetic'

    def __post_init__(self):
        _raise_if(_check_fields(self))

    def check_environment(self, name: str, data_kind: str, batch_shards: int | None, num_processes: int) -> list[str]:
        """Problems of this stage on the machine: its batch over the mesh's `batch_shards` and the
        processes, and its data files (LLaVA data)."""
        problems = []
        if batch_shards is not None:
            gb, accum = self.global_batch, self.grad_accum_steps
            if gb % (accum * batch_shards):
                problems.append(f"global_batch: {gb} is not divisible by grad_accum_steps * data * fsdp = {accum} * "
                                f"{batch_shards}; put a multiple of {accum * batch_shards} (or change "
                                f"stages.{name}.grad_accum_steps / mesh)")
            elif gb % num_processes:
                problems.append(f"global_batch: {gb} is not divisible by the {num_processes} processes")
        if data_kind == "llava":
            for field, kind, what in (("data_file", "file", "a LLaVA-format JSON/JSONL file"),
                                      ("image_root", "dir", "the folder its image paths are relative to")):
                bad = _path_problem(field, getattr(self, field), PATH_HINTS.get((name, field), what), kind)
                problems += [bad] if bad else []
        return problems


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The eval stage: benchmarks run on the last training stage's checkpoint."""

    benchmarks: tuple[str, ...] = _field(check=lambda v: _unknown_benchmarks(v))
    data_root: str = _field()  # '' with synthetic data: the synthetic set's folder
    batch_size: int = _field(lo=1)
    limit: int = _field(lo=0)  # 0 = every question
    rules: str = _field(choices=lambda: _rule_sets())  # the scoring rule set (evaluation/rules.py)

    def __post_init__(self):
        _raise_if(_check_fields(self))

    def check_paths(self, data_kind: str) -> list[str]:
        """LLaVA data: `data_root` must be the benchmarks' folder."""
        if data_kind != "llava":
            return []
        bad = _path_problem("data_root", self.data_root, "the folder with one sub-folder per benchmark (files listed "
                            "in vlm_spatial/evaluation/benchmarks/<name>.py)", "dir")
        return [bad] if bad else []


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax saves of every training stage."""

    save_every: int = _field(lo=1)
    keep: int = _field(lo=1)
    async_save: bool = _field()

    def __post_init__(self):
        _raise_if(_check_fields(self))


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Per-step metrics outputs."""

    tensorboard: bool
    progress: bool


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run of `python -m vlm_spatial.main`: typed, frozen, checked (see the module docstring)."""

    variant: str = _field(check=lambda v: None if v else "empty; put the variant's name (its configs/<variant>.py)")
    run: tuple[str, ...] = _field(each=lambda: STAGES, check=_run_order)
    seed: int = _field(lo=0)
    mesh: MeshConfig = _field()
    model: ModelConfig = _field()
    data: DataConfig = _field()
    stages: Mapping[str, StageConfig] = _field()
    eval: EvalConfig = _field()
    checkpoint: CheckpointConfig = _field()
    log: LogConfig = _field()

    def __post_init__(self):
        object.__setattr__(self, "stages", types.MappingProxyType(dict(self.stages)))
        problems = _check_fields(self)
        for s in self.train_stages:
            if s not in self.stages:
                problems.append(f"stages.{s}: missing; add the stage (see configs/common.py)")
            elif self.data.kind == "synthetic" and not self.stages[s].synthetic_split:
                problems.append(f"stages.{s}.synthetic_split: not set (data.kind='synthetic'); put one of "
                                f"{', '.join(SYNTHETIC_SPLITS)}")
        if self.model.random_init and self.data.kind == "llava" and self.train_stages:
            problems.append(f"model.random_init: LLaVA data (data.kind='llava') is encoded with the initial "
                            f"checkpoint's tokenizer; put False and set model.init_checkpoint to {ASSEMBLE}")
        _raise_if(problems)

    @property
    def train_stages(self) -> tuple[str, ...]:
        """The training stages of `run`, in order."""
        return tuple(s for s in TRAIN_STAGES if s in self.run)

    @property
    def paper_variant(self) -> str | None:
        """`variant` when the paper's tables have a row for it (the eval report compares with it), else None."""
        from vlm_spatial.evaluation.report import load_paper_results, paper_rows

        try:
            paper_rows(load_paper_results(), self.variant)
        except KeyError:
            return None
        return self.variant

    def ignored(self) -> dict[str, str]:
        """{field or section: why this run does not read it}. Setting one explicitly is an error."""
        return ignored_fields(self.data.kind, self.model.random_init, self.model.rope2d,
                              {s: st.num_steps for s, st in self.stages.items()}, self.model.connector)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict with the field names of the ConfigDict it came from (JSON-ready)."""
        return _to_plain(self)


def ignored_fields(data_kind: str | None, random_init: bool | None, rope2d: bool | None,
                   num_steps: Mapping[str, int], connector: str | None = None) -> dict[str, str]:
    """{field or section: why no stage of the job reads it}, for a job on `data_kind` data, from a
    random init or not, with 2D-RoPE or not, with the training stages' `num_steps` and `connector`
    (the settings it does not read). A rule whose switch is None (unknown: that part of the config
    has problems of its own) is left out.

    The settings of a stage left out of `run` are not ignored: a later start of the same job (the
    same command with another `run`, as when resuming) reads them, so they stay part of its config."""
    out: dict[str, str] = {}
    for s, steps in num_steps.items():
        if steps:
            out[f"stages.{s}.num_epochs"] = f"stages.{s}.num_steps={steps} is set (0 = use num_epochs)"
        if data_kind == "synthetic":
            out.update({f"stages.{s}.{f}": f"data.kind='synthetic' reads stages.{s}.synthetic_split"
                        for f in ("data_file", "image_root")})
        elif data_kind == "llava":
            out[f"stages.{s}.synthetic_split"] = f"data.kind='llava' reads stages.{s}.data_file and image_root"
    if data_kind == "llava":
        out["data.synthetic"] = "data.kind='llava'"
    if random_init:
        out["model.init_checkpoint"] = "model.random_init=True"
    elif random_init is False:
        why = ("the checkpoint's architecture is used (model.vision only names the encoder family it must "
               "hold); change it with the knobs model.rope2d, rope2d_layout, rope2d_theta, rope2d_layers, "
               "keep_abs_pos_emb, image_size, vision_feature_layer, vision_feature_select, connector (and its "
               "settings), or assemble another one")
        out.update({f"model.{k}": why for k in ("vision", "decoder", "vision_overrides", "decoder_overrides")})
    if rope2d is False:
        out.update({f"model.{k}": "model.rope2d=False" for k in ("rope2d_layout", "rope2d_theta", "rope2d_layers",
                                                                  "keep_abs_pos_emb")})
    if connector in connectors.names():
        out.update({f"model.connector_{k}": f"model.connector={connector!r} does not read it"
                    for k in connectors.SETTINGS if k not in connectors.reads(connector)})
    return out


def _to_plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {k: _to_plain(v) for k, v in x.items()}
    return x


# ----------------------------------------------------------------------------- ConfigDict -> dataclasses
def _keys(node) -> list[str] | None:
    """The keys of a ConfigDict / dict node, or None when it is not one."""
    if hasattr(node, "keys") and hasattr(node, "__getitem__"):
        return list(node.keys())
    return None


def _plain_dict(node) -> dict:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_BAD = object()  # a value that could not be converted (its problem is recorded)


def _convert(tp, value, field: str, problems: list[str]):
    """`value` (from the ConfigDict) as type `tp`, or `_BAD` after recording problems at `field`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, field, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, field, problems)
    if origin in (collections.abc.Mapping, dict):
        keys = _keys(value)
        if keys is None:
            problems.append(f"{field}: {value!r} is a {type(value).__name__}; expected a dict")
            return _BAD
        if args and args[1] is StageConfig:  # stage groups: only the training stages
            problems += [f"{field}.{k}: not a training stage; one of {', '.join(TRAIN_STAGES)}"
                         for k in keys if k not in TRAIN_STAGES]
            return {k: _build(StageConfig, value[k], f"{field}.{k}", problems) for k in keys if k in TRAIN_STAGES}
        return _plain_dict(value)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            problems.append(f"{field}: {value!r} is a {type(value).__name__}; expected a tuple, e.g. (a, b)")
            return _BAD
        inner = args[0]
        if inner is str:  # entries given comma-joined on the command line are split
            value = [p.strip() for entry in value for p in str(entry).split(",") if p.strip()]
        out = [_convert(inner, v, field, problems) for v in value]
        return _BAD if any(v is _BAD for v in out) else tuple(out)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        return value
    problems.append(f"{field}: {value!r} is a {type(value).__name__}; expected {_type_name(tp)}")
    return _BAD


def _field_values(cls, node, prefix: str, problems: list[str]) -> dict | None:
    """{field: value or `_BAD`} of dataclass `cls` from ConfigDict `node` at `prefix`, recording
    missing, unknown and mistyped fields in `problems`; None when `node` is not a group."""
    keys = _keys(node)
    if keys is None:
        problems.append(f"{prefix}: {node!r} is a {type(node).__name__}; expected a group of fields")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    dotted = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    problems += [f"{dotted(k)}: not a field of {prefix or 'the config'}; one of {', '.join(names)}"
                 for k in keys if k not in names]
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in keys:
            problems.append(f"{dotted(f.name)}: missing; add it to the config (see configs/common.py)")
            continue
        v = _convert(hints[f.name], node[f.name], dotted(f.name), problems)
        bad = [] if v is _BAD else _check_field(f, v)
        problems += [f"{prefix}.{p}" if prefix else p for p in bad]
        values[f.name] = _BAD if bad else v
    return values


def _sound(values: dict | None, cls) -> bool:
    """Whether every field of `cls` has a converted value (stage groups: every stage)."""
    if values is None or any(values.get(f.name, _BAD) is _BAD for f in dataclasses.fields(cls)):
        return False
    return all(_BAD not in v.values() for v in values.values() if isinstance(v, dict))


def _build(cls, node, prefix: str, problems: list[str]):
    """An instance of dataclass `cls` from ConfigDict `node` at `prefix`, or `_BAD` after recording
    every problem: missing, unknown or mistyped fields, then the class's own checks."""
    before = len(problems)
    values = _field_values(cls, node, prefix, problems)
    if len(problems) > before or not _sound(values, cls):
        return _BAD
    try:
        return cls(**values)
    except ConfigError as e:
        problems += _under(prefix, e.problems) if prefix else e.problems
        return _BAD


def parse(config, num_devices: int, num_processes: int = 1, *, overrides: Iterable[str] = (),
          source: str = "the config") -> RunConfig:
    """The `RunConfig` of `config` (an ml_collections ConfigDict of `configs/*.py`) for a run on
    `num_devices` devices in `num_processes` processes. `overrides`: the dotted fields set explicitly
    (`config_flags.get_override_values`); one the run does not read is a problem. Raises
    `ConfigError` listing every problem (each 'field: what is wrong; what to put there')."""
    problems: list[str] = []
    values = _field_values(RunConfig, config, "", problems) or {}
    run = None
    if not problems and _sound(values, RunConfig):
        try:
            run = RunConfig(**values)
        except ConfigError as e:
            problems += e.problems
    # what needs the machine, on every part that is sound (even when others are not)
    sound = {k: v for k, v in values.items() if v is not _BAD}
    model, mesh, evals = (sound.get(k) for k in ("model", "mesh", "eval"))
    data = _parts(DataConfig, config, "data")
    stages = {k: v for k, v in (sound.get("stages") or {}).items() if v is not _BAD}
    scratch: list[str] = []
    names = [s for s in _convert(tuple[str, ...], _get(config, "run"), "run", scratch) or () if s in STAGES]
    kind = data.get("kind")
    model_parts = _parts(ModelConfig, config, "model")
    batch_shards = None
    if mesh is not None:
        try:
            sizes = mesh.sizes(num_devices)
            batch_shards = sizes[0] * sizes[1]
        except ValueError as e:
            problems.append(f"mesh: {e}")
    if kind is not None:
        if any(s in names for s in TRAIN_STAGES):
            if model is not None:
                problems += _under("model", model.check_checkpoint(kind))
            elif model_parts.get("random_init") is False and "init_checkpoint" in model_parts:
                # the model has problems of its own: still check where it starts from
                bad = _path_problem("model.init_checkpoint", model_parts["init_checkpoint"], ASSEMBLE, "dir")
                problems += [bad] if bad else []
        if kind == "synthetic" and data.get("synthetic") is not None:
            problems += _under("data.synthetic", data["synthetic"].check_paths())
        for s, stage in stages.items():
            if s in names:
                problems += _under(f"stages.{s}", stage.check_environment(s, kind, batch_shards, num_processes))
        if evals is not None and "eval" in names:
            problems += _under("eval", evals.check_paths(kind))
    ignored = ignored_fields(kind, model_parts.get("random_init"), model_parts.get("rope2d"),
                             {s: st.num_steps for s, st in stages.items()}, model_parts.get("connector"))
    for field in overrides:
        why = next((w for prefix, w in ignored.items()
                    if field == prefix or field.startswith(prefix + ".") or prefix.startswith(field + ".")), None)
        if why:
            problems.append(f"{field}: set but not read by this run: {why}; remove the override")
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return run


def _get(config, name: str):
    try:
        return config[name]
    except (KeyError, AttributeError, TypeError):
        return None


def _parts(cls, config, name: str) -> dict:
    """{field: value} of the fields of section `name` (a `cls`) that are sound on their own."""
    scratch: list[str] = []
    values = _field_values(cls, _get(config, name), name, scratch) or {}
    return {k: v for k, v in values.items() if v is not _BAD}
