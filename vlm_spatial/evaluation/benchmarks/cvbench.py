"""CV-Bench (Cambrian-1): 2D Count/Relation on COCO and ADE20K, 3D Depth/Distance on Omni3D.

Files (any that exist are read, 2D and 3D together):
* Hugging Face ``nyu-visionx/CV-Bench``: ``test_2d.jsonl`` / ``test_3d.jsonl`` / ``test.jsonl``
  (fields ``idx, type, task, question, choices, answer "(C)", prompt, filename, source, ...``;
  images under ``img/2D/...``, ``img/3D/...``) or ``test_2d.parquet`` / ``test_3d.parquet``
  (the same fields with an embedded ``image``).
* VLMEvalKit ``CV-Bench-2D.tsv`` / ``CV-Bench-3D.tsv`` (``index, image, question, A.., answer,
  prompt, source, split, task``).

Prompt (paper-compatible): VLMEvalKit's LLaVA MCQ prompt built from ``question`` and the
choices as letters A, B, ... (CV-Bench is an MCQ dataset in VLMEvalKit, and LLaVA's custom MCQ
prompt replaces ``CVBench.build_prompt``, which would send the dataset's own ``prompt``).
``prompt_style='official'`` sends the dataset's ``prompt`` field ("... Select from the
following choices.\\n(A) 3\\n(B) 2 ...") instead. Parse: VLMEvalKit ``can_infer``. Gold:
``"(C)"`` -> ``C``. Question ids are ``"<2D|3D>_<idx or index>"`` (2D and 3D number separately).

Metrics
* ``acc_2d_coco``, ``acc_2d_ade20k``: accuracy within each 2D source (Table 4 columns).
* ``acc_2d`` (paper-compatible "CV-Bench 2D Overall", Tables 2 and 4) = mean of the per-source
  accuracies, (acc_COCO + acc_ADE20K) / 2 -- VLMEvalKit ``CVBench.report_accuracy`` (average
  over sources, not over questions); the same 2D formula as the CV-Bench README.
* ``acc_3d`` = accuracy over the Omni3D questions (VLMEvalKit ``report_acc`` for 3D).
* ``overall_official`` = (acc_2d + acc_3d) / 2 -- the CV-Bench README's combined accuracy
  (``accuracy_2d = (ade + coco) / 2; accuracy_3d = omni; combined = (2d + 3d) / 2``).
* ``by_task``: Count / Relation / Depth / Distance.
"""
from __future__ import annotations

import re

import numpy as np

from .answer_parsing import LETTERS, llava_mcq_prompt
from .base import (Sample, accuracy, count_unparsed, group_accuracy, hf_image, read_records,
                   read_vlmevalkit_tsv, register)
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row


def _letter(answer) -> str:
    m = re.search(r"\(?([A-Z])\)?", str(answer).strip())
    return m.group(1) if m else str(answer).strip()


@register
class CVBench(MCQBenchmark):
    name = "cvbench"
    title = "CV-Bench"
    vlmevalkit_key = "CV-Bench-2D"
    primary = "acc_2d"
    paper_columns = {"CV-Bench 2D Overall": "acc_2d", "CV-Bench 2D COCO": "acc_2d_coco",
                     "CV-Bench 2D ADE20K": "acc_2d_ade20k"}
    subdirs = ("cvbench", "CV-Bench", "cv-bench")
    expected_files = ("test_2d.jsonl / test_3d.jsonl / test.jsonl with img/ (HF nyu-visionx/CV-Bench)",
                      "test_2d.parquet / test_3d.parquet (HF nyu-visionx/CV-Bench)",
                      "CV-Bench-2D.tsv / CV-Bench-3D.tsv (VLMEvalKit)")
    published = ("https://huggingface.co/datasets/nyu-visionx/CV-Bench ; "
                 "https://opencompass.openxlab.space/utils/VLMEval/CV-Bench-2D.tsv")

    def _files(self, data_root):
        """The first group of published files found (2D and 3D files are read together)."""
        groups = [["CV-Bench-2D.tsv", "CV-Bench-3D.tsv"],
                  ["test_2d.parquet", "test_3d.parquet"],
                  ["test_2d.jsonl", "test_3d.jsonl"],
                  ["test.jsonl"], ["test.parquet"]]
        for g in groups:
            found = [self.find(data_root, [f], required=False) for f in g]
            found = [f for f in found if f is not None]
            if found:
                return found
        self.find(data_root, ["CV-Bench-2D.tsv"])  # raises with the full message
        return []

    def load(self, data_root) -> list[Sample]:
        samples = []
        for path in self._files(data_root):
            if path.suffix == ".tsv":
                for r in read_vlmevalkit_tsv(path):
                    s = sample_from_vlmevalkit_row(r, meta_keys=("source", "split", "task"))
                    if self.options.get("prompt_style") == "official" and r.get("prompt"):
                        s.prompt = r["prompt"]
                    s.qid = f"{s.meta.get('split', '')}_{s.qid}"
                    s.gold = _letter(s.gold)
                    samples.append(s)
                continue
            for r in read_records(path):
                samples.append(self._from_hf(r, path))
        return samples

    def _from_hf(self, r: dict, path) -> Sample:
        choices = {LETTERS[i]: str(c) for i, c in enumerate(r["choices"])}
        if self.options.get("prompt_style") == "official":
            prompt = r["prompt"]
        else:
            prompt = llava_mcq_prompt(r["question"], choices)
        if r.get("image") is not None:
            image, kind = hf_image(r["image"])
        else:
            image, kind = str(path.parent / r["filename"]), "path"
        split = r.get("type") or ("3D" if r.get("source") == "Omni3D" else "2D")
        return Sample(qid=f"{split}_{r['idx']}", prompt=prompt, gold=_letter(r["answer"]),
                      image=image, image_kind=kind, choices=choices,
                      meta={"source": r.get("source"), "split": split, "task": r.get("task")})

    def metrics(self, records: list[dict]) -> dict:
        d2 = [r for r in records if r["meta"].get("split") == "2D"]
        d3 = [r for r in records if r["meta"].get("split") == "3D"]
        out = {"n": len(records), "n_2d": len(d2), "n_3d": len(d3),
               "n_unparsed": count_unparsed(records), "accuracy": accuracy(records)}
        if d2:
            by_src = group_accuracy(d2, lambda r: str(r["meta"].get("source")).upper())
            out["acc_2d_coco"] = by_src.get("COCO", float("nan"))
            out["acc_2d_ade20k"] = by_src.get("ADE20K", float("nan"))
            out["acc_2d"] = float(np.mean(list(by_src.values())))
        if d3:
            out["acc_3d"] = accuracy(d3)
        if d2 and d3:
            out["overall_official"] = (out["acc_2d"] + out["acc_3d"]) / 2
        out["by_task"] = group_accuracy(records, lambda r: r["meta"].get("task"))
        return out
