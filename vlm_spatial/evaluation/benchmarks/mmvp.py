"""MMVP (Tong et al., "Eyes Wide Shut?"): 300 questions on 150 CLIP-blind image pairs.

Files (either):
* VLMEvalKit ``MMVP.tsv`` (index 1..300, base64 image, question, A, B, answer letter).
* The benchmark's own release (HF ``MMVP/MMVP``): ``Questions.csv`` with header
  ``Index,Question,Options,Correct Answer`` (options ``"(a) Open (b) Closed"``, answer
  ``"(a)"``) and images ``MMVP Images/<Index>.jpg``.

Prompt: VLMEvalKit's LLaVA MCQ prompt, ``question\\nA. Open\\nB. Closed\\nAnswer with the
option's letter from the given choices directly.`` Parse: VLMEvalKit ``can_infer``.

Metrics
* ``question_acc`` (paper-compatible, Table 2 "MMVP"): mean over all 300 questions of
  ``hit`` -- VLMEvalKit ``report_acc_MMVP`` "question_accuray".
* ``pair_acc`` (the benchmark's official metric): pairs are rows by order, ``pair =
  (Index - 1) // 2`` (rows 1&2, 3&4, ...); a pair scores 1 only if both questions are right;
  mean over the 150 pairs -- VLMEvalKit ``report_acc_MMVP`` "case_accuray", same pairing as
  tsb0601/MMVP ``scripts/evaluate_mllm.py`` (consecutive rows, both correct).
* ``question_acc_corrected`` / ``pair_acc_corrected``: the same with the two disputed labels
  of tsb0601/MMVP issue #14 swapped (Index 279 -> (b) Sitting, 280 -> (a) Standing); the
  shipped labels stay the default because the paper's numbers use them. (Issue #30 later
  disputes 99/100 as well; pass ``extra_disputed={99: 'A', 100: 'B'}`` to include them.)
"""
from __future__ import annotations

import re

from .answer_parsing import llava_mcq_prompt
from .base import Sample, count_unparsed, read_csv, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row

DISPUTED_LABELS = {279: "B", 280: "A"}  # tsb0601/MMVP issue #14


def parse_mmvp_options(options: str) -> dict:
    """``"(a) Open (b) Closed"`` -> ``{'A': 'Open', 'B': 'Closed'}``."""
    parts = re.split(r"\(([a-z])\)\s*", options.strip())
    # parts = ['', 'a', 'Open ', 'b', 'Closed']
    return {parts[i].upper(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def parse_mmvp_answer(answer: str) -> str:
    m = re.search(r"\(?([a-zA-Z])\)?", answer.strip())
    return m.group(1).upper() if m else answer.strip().upper()


@register
class MMVP(MCQBenchmark):
    name = "mmvp"
    title = "MMVP"
    vlmevalkit_key = "MMVP"
    primary = "question_acc"
    paper_columns = {"MMVP": "question_acc"}
    subdirs = ("mmvp", "MMVP")
    expected_files = ("MMVP.tsv (VLMEvalKit)",
                      "Questions.csv + 'MMVP Images/<Index>.jpg' (Hugging Face MMVP/MMVP)")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/MMVP.tsv ; "
                 "https://huggingface.co/datasets/MMVP/MMVP")
    group_keys = ()

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["MMVP.tsv", "Questions.csv"])
        if path.suffix == ".tsv":
            samples = [sample_from_vlmevalkit_row(r) for r in read_vlmevalkit_tsv(path)]
            for s in samples:
                s.meta["index"] = int(float(s.qid))
            return samples
        img_dir = next((path.parent / d for d in ("MMVP Images", "images", "MMVP_Images")
                        if (path.parent / d).is_dir()), path.parent / "MMVP Images")
        samples = []
        for row in read_csv(path):
            idx = int(row["Index"])
            options = parse_mmvp_options(row["Options"])
            samples.append(Sample(
                qid=str(idx),
                prompt=llava_mcq_prompt(row["Question"].strip(), options),
                gold=parse_mmvp_answer(row["Correct Answer"]),
                image=str(img_dir / f"{idx}.jpg"), image_kind="path",
                choices=options, meta={"index": idx}))
        return samples

    def metrics(self, records: list[dict]) -> dict:
        extra = self.options.get("extra_disputed") or {}
        fixes = {**DISPUTED_LABELS, **{int(k): v for k, v in extra.items()}}

        def summarise(hit_of):
            hits = {int(r["meta"]["index"]): hit_of(r) for r in records}
            pairs: dict = {}
            for idx, h in hits.items():
                pairs.setdefault((idx - 1) // 2, []).append(h)
            q = sum(hits.values()) / len(hits) if hits else float("nan")
            p = (sum(all(v) for v in pairs.values()) / len(pairs)) if pairs else float("nan")
            return q, p

        q, p = summarise(lambda r: bool(r["correct"]))

        def corrected(r):
            idx = int(r["meta"]["index"])
            if idx in fixes:
                return r.get("parsed") is not None and r["parsed"] == fixes[idx]
            return bool(r["correct"])

        qc, pc = summarise(corrected)
        return {"question_acc": q, "pair_acc": p, "question_acc_corrected": qc,
                "pair_acc_corrected": pc, "n": len(records),
                "n_pairs": len({(int(r["meta"]["index"]) - 1) // 2 for r in records}),
                "n_unparsed": count_unparsed(records)}
