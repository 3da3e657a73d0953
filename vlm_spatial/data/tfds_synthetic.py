"""The synthetic spatial set as a TensorFlow-Datasets dataset in ArrayRecord format (no TensorFlow).

``build_tfds(synthetic_dir)`` converts the LLaVA files written by ``vlm_spatial.data.synthetic``
into ``<synthetic_dir>/tfds/vlm_spatial_synthetic/1.0.0/*.array_record-*`` (splits ``train``,
``val``, ``test``, ``pretrain`` where they hold records; record order kept). Each example::

    {"id": Text, "image": Image (the PNG bytes), "conversations": Sequence({"from": Text, "value": Text}),
     "families": Sequence(Text)}

It reads back as any TFDS dataset does, random access and no TensorFlow needed::

    import tensorflow_datasets as tfds
    ds = tfds.data_source("vlm_spatial_synthetic", data_dir=f"{synthetic_dir}/tfds", split="train")

and :class:`TfdsLlavaSource` hands it to the training pipeline
(``build_train_pipeline(tfds_data_dir=..., ...)``) as LLaVA records with the encoded image bytes,
so the same templates, preprocessing and bad-record accounting apply.
Needs ``pip install "vlm_spatial[tfds]"`` (tensorflow-datasets; it pulls pyarrow, not TensorFlow).
"""
from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

NAME = "vlm_spatial_synthetic"
SPLITS = ("train", "val", "test", "pretrain")


class VlmSpatialSynthetic(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over a directory written by ``vlm_spatial.data.synthetic.generate``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "LLaVA-format synthetic spatial questions (vlm_spatial.data.synthetic)."}

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        turn = {"from": tfds.features.Text(), "value": tfds.features.Text()}
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedurally generated spatial-reasoning questions about coloured shapes.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(encoding_format="png"),
                "conversations": tfds.features.Sequence(turn),
                "families": tfds.features.Sequence(tfds.features.Text()),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        if self._source_dir is None:
            raise ValueError(f"{NAME} is built from a synthetic set: pass source_dir=")
        records = {}
        for split in SPLITS:  # the splits the set has (a split of 0 records is left out)
            path = os.path.join(self._source_dir, f"{split}.json")
            if os.path.isfile(path):
                with open(path) as f:
                    records[split] = json.load(f)
        return {split: self._generate_examples(recs) for split, recs in records.items() if recs}

    def _generate_examples(self, records: list[dict]):
        for r in records:
            with open(os.path.join(self._source_dir, r["image"]), "rb") as f:
                png = f.read()
            yield r["id"], {"id": r["id"], "image": png,
                            "conversations": [{"from": t["from"], "value": t["value"]} for t in r["conversations"]],
                            "families": r.get("families", [])}


def build_tfds(source_dir: str, data_dir: str | None = None) -> str:
    """Writes the ArrayRecord TFDS dataset of the synthetic set in ``source_dir``.

    Returns the TFDS ``data_dir`` (default ``<source_dir>/tfds``) to pass to ``tfds.data_source``.
    """
    data_dir = data_dir or os.path.join(source_dir, "tfds")
    builder = VlmSpatialSynthetic(source_dir=source_dir, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return data_dir


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class TfdsLlavaSource:
    """grain ``RandomAccessDataSource``: a split of the TFDS dataset as pipeline elements.

    ``source[i]`` -> ``{"record": {"id", "image", "conversations"}, "image_bytes": PNG bytes,
    "image_root": None, "file": "<name>:<split>", "index": i}`` (the element format of
    :class:`~vlm_spatial.data.sources.LlavaJsonSource`, with the image carried as bytes).
    """

    def __init__(self, data_dir: str, split: str = "train", name: str = NAME):
        self._name = f"{name}:{split}"
        self._ds = tfds.data_source(name, data_dir=os.fspath(data_dir), split=split,
                                    decoders={"image": tfds.decode.SkipDecoding()})

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        ex = self._ds[int(index)]
        rid = _text(ex["id"])
        convs = [{"from": _text(f), "value": _text(v)}
                 for f, v in zip(ex["conversations"]["from"], ex["conversations"]["value"])]
        return {"record": {"id": rid, "image": f"{self._name}/{rid}", "conversations": convs},
                "image_bytes": bytes(ex["image"]), "image_root": None, "file": self._name, "index": int(index)}

    def __repr__(self) -> str:
        return f"TfdsLlavaSource({self._name}, len={len(self)})"
