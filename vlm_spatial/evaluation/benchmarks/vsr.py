"""VSR zero-shot test split (Liu et al., TACL 2023): 1,222 caption-true/false questions.

Files (either):
* VLMEvalKit ``VSR-zeroshot.tsv`` (its download is HF ``ignoreandfly/vsr_zeroshot_tsv``
  ``vsr_zeroshot_dataset_yn_strict.tsv``: ``index, image, question, answer ('Yes'|'No')``).
  VSR-zeroshot is a Y/N dataset there (``ImageYORNDataset``), so the question cell is sent
  verbatim -- the paper-compatible prompt.
* The benchmark's repository (cambridgeltl/visual-spatial-reasoning)
  ``data/splits/zeroshot/test.jsonl`` (fields ``image, image_link, caption, label (1/0),
  relation, subj, obj, ...``; images are COCO-2017 files under ``images/``). The question is
  built as ``'<caption>\\nIs this statement about the image true? Please answer yes or no.'``
  -- the TSV's own wording was not available to read, so numbers from the jsonl path may
  differ from a TSV run; gold = ``'Yes' if label == 1 else 'No'``.

Parse: VLMEvalKit ``YOrN_Extraction``; ``correct = (extracted == answer)``.
Metrics (VLMEvalKit ``yorn.py::VSR_rating``): ``accuracy`` = 100 * mean(correct)
(paper-compatible, Table 2 "VSR", percent scale), ``precision`` / ``recall`` (x100) and ``f1``
(a fraction, as VSR_rating prints it) of the 'Yes' class, and ``by_relation`` when known.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .answer_parsing import yorn_extraction
from .base import (Benchmark, Sample, count_unparsed, group_accuracy, read_jsonl,
                   read_vlmevalkit_tsv, register)

VSR_TEMPLATE = "{caption}\nIs this statement about the image true? Please answer yes or no."


def vsr_sample(i: int, row: dict, image_dir: Path) -> Sample:
    """One row of a VSR repository split file (any split) -> Sample; qid is the line number."""
    return Sample(qid=str(i), prompt=VSR_TEMPLATE.format(caption=row["caption"]),
                  gold="Yes" if int(row["label"]) == 1 else "No",
                  image=str(image_dir / row["image"]), image_kind="path",
                  meta={"relation": row.get("relation"), "image_file": row["image"]})


@register
class VSR(Benchmark):
    name = "vsr"
    title = "VSR"
    vlmevalkit_key = "VSR-zeroshot"
    primary = "accuracy"
    scale = "percent"
    paper_columns = {"VSR": "accuracy"}
    subdirs = ("vsr", "VSR", "visual-spatial-reasoning")
    expected_files = ("VSR-zeroshot.tsv (VLMEvalKit)",
                      "data/splits/zeroshot/test.jsonl + images/ (cambridgeltl/visual-spatial-reasoning)")
    published = ("https://github.com/cambridgeltl/visual-spatial-reasoning ; "
                 "https://huggingface.co/datasets/cambridgeltl/vsr_zeroshot")

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["VSR-zeroshot.tsv", "data/splits/zeroshot/test.jsonl",
                                     "zeroshot/test.jsonl", "test.jsonl"])
        if path.suffix == ".tsv":
            return [Sample(qid=str(r["index"]), prompt=str(r["question"]),
                           gold=str(r["answer"]).strip().capitalize(), image=r.get("image"),
                           image_kind="base64", meta={"relation": r.get("category")})
                    for r in read_vlmevalkit_tsv(path)]
        root = next((d for d in path.parents if (d / "images").is_dir()), path.parent)
        return [vsr_sample(i, r, root / "images") for i, r in enumerate(read_jsonl(path))]

    def parse(self, sample: Sample, raw: str):
        return yorn_extraction(raw)

    def metrics(self, records: list[dict]) -> dict:
        y_true = np.array([r["gold"] == "Yes" for r in records])
        y_pred = np.array([r.get("parsed") == "Yes" for r in records])
        tp = int((y_true & y_pred).sum())
        fp = int((~y_true & y_pred).sum())
        fn = int((y_true & ~y_pred).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out = {"accuracy": 100 * float(np.mean([bool(r["correct"]) for r in records])),
               "precision": 100 * precision, "recall": 100 * recall, "f1": f1,
               "n": len(records), "n_unparsed": count_unparsed(records)}
        if any(r["meta"].get("relation") for r in records):
            out["by_relation"] = {k: 100 * v for k, v in group_accuracy(
                records, lambda r: r["meta"].get("relation")).items()}
        return out
