"""grain training pipelines: LLaVA JSON (or the synthetic set) -> padded, bucketed model batches.

Public entry points:

* :func:`build_train_pipeline` (plain arguments) -> :class:`PipelineIterator`, a grain
  ``DatasetIterator`` whose ``get_state()``/``set_state()`` (JSON-serialisable dict) restore the
  stream exactly; it works with ``grain.checkpoint.CheckpointSave(it)`` /
  ``CheckpointRestore(it)`` inside an Orbax ``Composite``. ``it.bad_records`` is the
  :class:`~vlm_spatial.data.bad_records.BadRecordStats` (``it.bad_records.as_metrics()`` gives
  ``{"data/skipped/<reason>": n, ..., "data/skipped/total": n}`` for the trainer's metrics).
* :func:`build_train_dataset` — the same as a grain ``IterDataset`` (``iter(ds)`` starts afresh).

Stages: ``MapDataset.source(LlavaJsonSource)`` -> per-host shard (:func:`host_shard`, ``[i::n]`` with
``i = jax.process_index()``, ``n = jax.process_count()``, equal lengths) -> ``shuffle(seed)`` (reshuffled each
epoch) -> ``repeat(num_epochs)`` -> ``map_with_index`` (validate + tokenize + template + decode +
preprocess; a bad record becomes a small marker element) -> ``to_iter_dataset`` (thread prefetch)
-> ``mp_prefetch`` (``num_workers`` decoding processes, when > 0) -> batching in the main process:
markers are counted/logged (or raised with ``on_bad_record="raise"``), ``B = global_batch_size /
process_count`` good examples are padded to the smallest of ``bucket_lengths`` that fits.

Batch (numpy), exactly the contract of CONTRIBUTING.md::

    input_ids      int32 [B, T]   image marker -> num_image_tokens x image_token_id
    attention_mask int32 [B, T]   1 = real token
    labels         int32 [B, T]   input_ids where the loss applies, -100 elsewhere (unshifted)
    pixel_values   float32 [B, H, W, 3] NHWC normalised, zeros for text-only rows
                   (NaFlex: pixel_values [B, P, 3*p*p], pixel_attention_mask int32 [B, P],
                    spatial_shapes int32 [B, 2])

``T`` is one of ``bucket_lengths`` (``max_len`` is always a bucket), so jit sees few shapes.
Worker processes are spawned: scripts that use ``num_workers > 0`` need an
``if __name__ == "__main__":`` guard and parsed absl flags (see LIBRARY-NOTES).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import grain
import numpy as np

from vlm_spatial.data.bad_records import RATIO_WINDOW, BadRecordError, BadRecordStats, is_bad_marker
from vlm_spatial.data.preprocess import ImageConfig, blank_image, preprocess_image
from vlm_spatial.data.sources import LlavaJsonSource
from vlm_spatial.data.templates import IGNORE_INDEX, ConversationEncoder, record_id, record_image


class ProcessRecord:
    """``(index, source element) -> example | bad-record marker`` (runs in worker processes).

    An example is ``{"input_ids": int32 [L], "labels": int32 [L], "pixels": [H,W,3] | NaFlex dict,
    "has_image": bool, "_epoch": int}``; ``index`` is the position in the repeated stream, so
    ``index // epoch_len`` is the epoch.
    """

    def __init__(self, encoder: ConversationEncoder, image_cfg: ImageConfig, epoch_len: int,
                 allow_outside_root: bool = False):
        self.encoder = encoder
        self.image_cfg = image_cfg
        self.epoch_len = max(1, int(epoch_len))
        self.allow_outside_root = allow_outside_root

    def __call__(self, index: int, element: dict) -> dict:
        epoch = int(index) // self.epoch_len
        rid = record_id(element.get("record"), f"{os.path.basename(str(element.get('file')))}#{element.get('index')}")
        try:
            return self._process(element, rid, epoch)
        except BadRecordError as e:
            return e.to_marker(epoch)

    def _process(self, element: dict, rid: str, epoch: int) -> dict:
        rec = element.get("record")
        if rec is None:
            raise BadRecordError(rid, "malformed_record", element.get("error", "unparsable record"))
        image = record_image(rec, rid)
        toks = self.encoder.encode(rec, has_image=image is not None, rid=rid)
        if image is None:
            pixels = blank_image(self.image_cfg)
        else:
            data = element.get("image_bytes")
            if data is None:
                data = image_path(element.get("image_root"), image, rid, self.allow_outside_root)
                if not os.path.isfile(data):
                    raise BadRecordError(rid, "missing_image", f"no file {data}")
            try:
                pixels = preprocess_image(data, self.image_cfg)
            except Exception as e:  # noqa: BLE001 — any decoder failure is a corrupt image
                raise BadRecordError(rid, "corrupt_image", f"{image}: {type(e).__name__}: {e}") from None
        return {"input_ids": toks["input_ids"], "labels": toks["labels"], "pixels": pixels,
                "has_image": image is not None, "_epoch": epoch}


def image_path(root: str | None, image: str, rid: str, allow_outside: bool = False) -> str:
    """The file of a record's ``image`` under its image ``root`` (None: the path as written).

    A path that leaves the root (absolute, or ``..`` climbing above it; judged on the normalised
    path, so a symlinked folder inside the root still counts as inside) raises a
    ``BadRecordError`` (``image_outside_root``) naming the record and the path, unless
    ``allow_outside``."""
    if root is None:
        return image
    path = os.path.normpath(os.path.join(root, image))
    inside = os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) == os.path.abspath(root)
    if not inside and not allow_outside:
        raise BadRecordError(rid, "image_outside_root", f"image {image!r} resolves to {path}, outside the "
                             f"image root {root} (data.allow_image_paths_outside_root=True reads it)")
    return path


def choose_bucket(length: int, bucket_lengths: Sequence[int]) -> int:
    """The smallest bucket >= length (buckets sorted ascending, the last one is max_len)."""
    for b in bucket_lengths:
        if length <= b:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {bucket_lengths[-1]}")


def collate(rows: Sequence[dict], bucket_lengths: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Pads examples to one bucket length and stacks them into a batch (see the module docstring)."""
    T = choose_bucket(max(len(r["input_ids"]) for r in rows), bucket_lengths)
    B = len(rows)
    ids = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    labels = np.full((B, T), IGNORE_INDEX, np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = r["input_ids"]
        mask[i, :n] = 1
        labels[i, :n] = r["labels"]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if isinstance(rows[0]["pixels"], dict):
        for k in rows[0]["pixels"]:
            batch[k] = np.stack([r["pixels"][k] for r in rows])
    else:
        batch["pixel_values"] = np.stack([r["pixels"] for r in rows])
    return batch


BAD_RECORD_POLICIES = ("skip", "raise")


class DataWaitInterrupted(Exception):
    """``stop_check()`` became true while the iterator waited for a batch (e.g. SIGTERM). The
    iterator is back at the batch boundary (its state as before this ``next``), so a checkpoint
    taken now resumes exactly."""


class PipelineIterator(grain.DatasetIterator):
    """Pulls examples, counts/drops bad-record markers, and yields padded batches.

    State: ``{"parent": <grain state>, "bad_records": <counters>, "num_workers": n}``
    (JSON-serialisable), taken at batch boundaries, so ``set_state(get_state())`` on a fresh
    pipeline built with the same arguments continues with exactly the batch the saved one would
    have yielded next (grain's state holds per-worker positions, so ``num_workers`` must match).
    ``close()`` (or ``with``) stops worker processes. Too many bad records raise
    ``TooManyBadRecords`` here, in the main process (``bad_records.BadRecordStats.seen``);
    ``set_stop_check(fn)`` makes a waiting ``next`` raise :class:`DataWaitInterrupted` once
    ``fn()`` is true.
    """

    def __init__(self, parent, batch_size: int, bucket_lengths: Sequence[int], pad_id: int,
                 on_bad_record: str, drop_remainder: bool, num_workers: int,
                 max_bad_record_ratio: float | None, ratio_window: int, source: str):
        super().__init__(parent)
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.bucket_lengths = list(bucket_lengths)
        self.pad_id = pad_id
        self.on_bad_record = on_bad_record
        self.drop_remainder = drop_remainder
        self.bad_records = BadRecordStats(max_ratio=max_bad_record_ratio, window=ratio_window, source=source)
        self._finished = False
        self._stop_check = None

    def set_stop_check(self, fn) -> None:
        """``fn() -> bool``, polled between records while a batch is gathered (the training loop
        passes its SIGTERM flag, so a preemption is honoured while data is slow or all bad)."""
        self._stop_check = fn

    def __next__(self) -> dict[str, np.ndarray]:
        rows = []
        rewind = None if self._stop_check is None else (self._parent.get_state(), self.bad_records.get_state())
        while len(rows) < self.batch_size:
            if rewind is not None and self._stop_check():
                self._parent.set_state(rewind[0])
                self.bad_records.set_state(rewind[1])
                raise DataWaitInterrupted("stopped while waiting for data")
            try:
                el = next(self._parent)
            except StopIteration:
                if not self._finished:
                    self._finished = True
                    self.bad_records.end_epoch(self.bad_records.current_epoch + 1)
                if rows and not self.drop_remainder:
                    break
                raise
            epoch = int(el.get("_epoch", 0))
            if epoch > self.bad_records.current_epoch:
                self.bad_records.end_epoch(epoch)
            bad = is_bad_marker(el)
            if bad:
                err = BadRecordError.from_marker(el)
                if self.on_bad_record == "raise":
                    raise err
                self.bad_records.record(err)
            self.bad_records.seen(bad)
            if not bad:
                rows.append(el)
        return collate(rows, self.bucket_lengths, self.pad_id)

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "bad_records": self.bad_records.get_state(),
                "num_workers": self.num_workers}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["num_workers"] != self.num_workers:
            raise ValueError(f"data iterator state was saved with num_workers={state['num_workers']}; "
                             f"this pipeline has num_workers={self.num_workers} (they must match to resume)")
        self._parent.set_state(state["parent"])
        self.bad_records.set_state(state["bad_records"])
        self._finished = False

    def __enter__(self) -> "PipelineIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PipelineDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, **kwargs):
        super().__init__(parent)
        self._kwargs = kwargs

    def __iter__(self) -> PipelineIterator:
        return PipelineIterator(self._parent.__iter__(), **self._kwargs)


def _bucket_list(bucket_lengths: Sequence[int] | None, max_len: int) -> list[int]:
    return sorted({int(b) for b in (bucket_lengths or []) if int(b) < max_len} | {int(max_len)})


def host_shard(ds: grain.MapDataset, shard_index: int, shard_count: int) -> grain.MapDataset:
    """Records ``shard_index, shard_index + n, ...`` (``n = shard_count``), cut to ``len // n`` so
    every host has the same number of records (at most ``n - 1`` records of the whole set unused)."""
    per_host = len(ds) // shard_count
    if per_host == 0:
        raise ValueError(f"{len(ds)} records cannot be split over {shard_count} hosts")
    return ds[shard_index: per_host * shard_count: shard_count]


def _source(data_files, image_roots, synthetic_dir, tfds_data_dir, split):
    """The random-access source and the default tokenizer directory (or None)."""
    given = [x is not None for x in (data_files, synthetic_dir, tfds_data_dir)]
    if sum(given) != 1:
        raise ValueError("give exactly one of data_files, synthetic_dir, tfds_data_dir")
    if synthetic_dir is not None:
        source = LlavaJsonSource([os.path.join(synthetic_dir, f"{split}.json")], [synthetic_dir])
        return source, os.path.join(synthetic_dir, "tokenizer")
    if tfds_data_dir is not None:
        from vlm_spatial.data.tfds_synthetic import TfdsLlavaSource

        return TfdsLlavaSource(tfds_data_dir, split), None
    return LlavaJsonSource(data_files, image_roots), None


def build_train_dataset(
    *,
    data_files: Sequence[str] | str | None = None,
    image_roots: Sequence[str | None] | str | None = None,
    synthetic_dir: str | None = None,
    tfds_data_dir: str | None = None,
    split: str = "train",
    tokenizer_dir: str | None = None,
    template: str = "vicuna_v1",
    max_len: int = 2048,
    bucket_lengths: Sequence[int] | None = None,
    global_batch_size: int = 128,
    seed: int = 0,
    num_workers: int = 0,
    image: ImageConfig | dict | None = None,
    num_image_tokens: int = 576,
    image_token_id: int = 32000,
    on_bad_record: str = "skip",
    max_bad_record_ratio: float | None = None,
    allow_image_paths_outside_root: bool = False,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    add_bos: bool = True,
    read_threads: int = 4,
    prefetch_buffer: int = 64,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """The training pipeline as a grain ``IterDataset`` of batches (see :func:`build_train_pipeline`)."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record={on_bad_record!r}; one of {BAD_RECORD_POLICIES}")
    source, default_tokenizer = _source(data_files, image_roots, synthetic_dir, tfds_data_dir, split)
    tokenizer_dir = tokenizer_dir or default_tokenizer
    if tokenizer_dir is None:
        raise ValueError("tokenizer_dir is required (a local Hugging Face tokenizer directory)")
    if image is None:
        image = ImageConfig()
    elif isinstance(image, dict):
        image = ImageConfig.from_dict(image)
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if global_batch_size % shard_count:
        raise ValueError(f"global_batch_size={global_batch_size} not divisible by {shard_count} hosts")
    encoder = ConversationEncoder(tokenizer_dir, template, max_len, num_image_tokens, image_token_id,
                                  add_bos=add_bos)
    ds = host_shard(grain.MapDataset.source(source), shard_index, shard_count)
    epoch_len = len(ds)
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.map_with_index(ProcessRecord(encoder, image, epoch_len, allow_image_paths_outside_root))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return _PipelineDataset(ds, batch_size=global_batch_size // shard_count,
                            bucket_lengths=_bucket_list(bucket_lengths, max_len),
                            pad_id=encoder.pad_id, on_bad_record=on_bad_record, drop_remainder=drop_remainder,
                            num_workers=num_workers, max_bad_record_ratio=max_bad_record_ratio,
                            ratio_window=min(RATIO_WINDOW, epoch_len), source=f"Data: {source!r}.")


def build_train_pipeline(**kwargs) -> PipelineIterator:
    """Builds the training pipeline and returns its checkpointable iterator.

    Keyword arguments (all plain values, so a config section maps onto them; see
    :func:`build_train_dataset` for defaults). The source is exactly one of:
      data_files / image_roots: LLaVA JSON/JSONL files and one image root per file (or one for all);
      synthetic_dir, split: a directory written by ``vlm_spatial.data.synthetic`` (reads
        ``{split}.json``, images under it, tokenizer from ``synthetic_dir/tokenizer``);
      tfds_data_dir, split: the synthetic set's TFDS ArrayRecord build (``tfds_synthetic``);
    and:
      tokenizer_dir: local Hugging Face tokenizer directory;
      template: "plain" (stage 1) | "vicuna_v1" (stage 2);
      max_len, bucket_lengths: longest sequence, and the padded lengths T a batch may take;
      global_batch_size: summed over hosts (each host yields global_batch_size / process_count rows);
      seed, num_epochs (None = repeat forever), num_workers (decoding processes; 0 = in-process),
        read_threads (decoding threads per process);
      image: ImageConfig (or its dict): encoder family, image_size, resize_mode, naflex, dtype;
      num_image_tokens, image_token_id: from the model config;
      on_bad_record: "skip" (count + log, the default) | "raise" (BadRecordError naming the record id);
      max_bad_record_ratio: with "skip", stop (``TooManyBadRecords``) when more than this share of
        the last ``min(RATIO_WINDOW, records per epoch)`` records were bad (None: only when every
        record of such a window is bad);
      allow_image_paths_outside_root: read image paths that are absolute or climb out of the
        image root with ``..`` (default: such records are bad, ``image_outside_root``);
      shard_index, shard_count: default jax.process_index(), jax.process_count().

    Returns a :class:`PipelineIterator`: ``next(it)`` -> batch dict (module docstring),
    ``it.get_state()`` / ``it.set_state(state)``, ``it.bad_records.as_metrics()``, ``it.close()``.
    """
    return iter(build_train_dataset(**kwargs))
