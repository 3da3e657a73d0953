"""TallyQA test (Acharya et al., AAAI 2019): simple and complex counting questions.

Files (either):
* VLMEvalKit ``TallyQA.tsv`` (``tallyqa_data.tsv`` of HF ``moondream/TallyQA-VLMEvalKit``:
  ``index, image, question, answer`` and, when present, ``issimple`` or ``category``).
* The official release (manoja328/TallyQA_dataset ``tallyqa.zip``): ``test.json``, a JSON list
  of ``{answer (int), data_source, image ("VG_100K_2/2410408.jpg"), image_id, issimple (bool),
  question, question_id}``; images under ``<dir>/<image>`` (Visual Genome / COCO layout).

Prompt (VLMEvalKit ``TallyQA.build_prompt``; TallyQA is a VQA set, so LLaVA adds nothing):
``question + "\\nAnswer the question using a single number."``.
Parse (VLMEvalKit ``utils/tallyqa.py::extract_count_from_prediction``): the first whole-word
count 0..20 written as digits or an English word (``"two"`` -> 2); none -> unparsed, wrong.

Metrics
* ``accuracy`` (paper-compatible, Table 2 "TallyQA", fraction): mean of ``count == answer``
  over all test questions -- VLMEvalKit ``TallyQA.evaluate``.
* official (TallyQA paper, sec. 5): ``simple_acc`` / ``complex_acc`` -- the same exact-count
  accuracy within ``issimple`` true / false; ``rmse`` (and per split) =
  sqrt(mean((count - answer)^2)) over the questions whose output has a count (``n_unparsed``
  counts the others, which RMSE leaves out).
"""
from __future__ import annotations

import math

from .answer_parsing import count_from_text
from .base import (Benchmark, Sample, accuracy, count_unparsed, read_json, read_vlmevalkit_tsv,
                   register)

SUFFIX = "\nAnswer the question using a single number."


def _rmse(pairs) -> float:
    return math.sqrt(sum((p - g) ** 2 for p, g in pairs) / len(pairs)) if pairs else float("nan")


def _simple_flag(value):
    """TSV ``issimple``/``category`` cell -> True/False, or None when absent."""
    if value is None:
        return None
    return str(value).strip().lower() in ("true", "1", "simple")


@register
class TallyQA(Benchmark):
    name = "tallyqa"
    title = "TallyQA"
    vlmevalkit_key = "TallyQA"
    primary = "accuracy"
    paper_columns = {"TallyQA": "accuracy"}
    subdirs = ("tallyqa", "TallyQA")
    expected_files = ("TallyQA.tsv / tallyqa_data.tsv (VLMEvalKit, HF moondream/TallyQA-VLMEvalKit)",
                      "test.json (+ images) from tallyqa.zip (manoja328/TallyQA_dataset)")
    published = ("https://huggingface.co/datasets/moondream/TallyQA-VLMEvalKit ; "
                 "https://github.com/manoja328/TallyQA_dataset")

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["TallyQA.tsv", "tallyqa_data.tsv", "test.json"])
        if path.suffix == ".tsv":
            return [Sample(qid=str(r["index"]), prompt=str(r["question"]) + SUFFIX,
                           gold=int(float(r["answer"])), image=r.get("image"),
                           image_kind="base64",
                           meta={"issimple": _simple_flag(r.get("issimple", r.get("category")))})
                    for r in read_vlmevalkit_tsv(path)]
        root = next((d for d in [path.parent, *path.parents]
                     if any((d / p).is_dir() for p in ("VG_100K", "VG_100K_2", "val2014"))),
                    path.parent)
        return [Sample(qid=str(r["question_id"]), prompt=r["question"] + SUFFIX,
                       gold=int(r["answer"]), image=str(root / r["image"]), image_kind="path",
                       meta={"issimple": bool(r.get("issimple")),
                             "data_source": r.get("data_source")})
                for r in read_json(path)]

    def parse(self, sample: Sample, raw: str):
        return count_from_text(raw)

    def metrics(self, records: list[dict]) -> dict:
        out = {"accuracy": accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records)}
        counted = [(int(r["parsed"]), int(r["gold"]), r["meta"].get("issimple")) for r in records
                   if r.get("parsed") is not None]
        out["rmse"] = _rmse([(p, g) for p, g, _ in counted])
        for name, flag in (("simple", True), ("complex", False)):
            sub = [r for r in records if r["meta"].get("issimple") is flag]
            if sub:
                out[f"{name}_acc"] = accuracy(sub)
                out[f"{name}_rmse"] = _rmse([(p, g) for p, g, s in counted if s is flag])
                out[f"n_{name}"] = len(sub)
        return out
