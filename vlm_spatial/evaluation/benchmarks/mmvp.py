"""MMVP (Tong et al., "Eyes Wide Shut?"): 300 questions on 150 CLIP-blind image pairs.

Files (either):
* VLMEvalKit ``MMVP.tsv`` (``index, image (base64), question, A, B, answer``).
* The benchmark's own release (HF ``MMVP/MMVP``): ``Questions.csv`` with header
  ``Index,Question,Options,Correct Answer`` (options ``"(a) Open (b) Closed"``, answer
  ``"(a)"``, Index 1..300) and images ``MMVP Images/<Index>.jpg``.

Prompt: VLMEvalKit's LLaVA MCQ prompt, ``question\\nA. Open\\nB. Closed\\nAnswer with the
option's letter from the given choices directly.`` Parse: VLMEvalKit ``can_infer``.

Questions are numbered 1..300 in file order (``Index`` of Questions.csv; TSV ``index`` minus the
smallest index plus one); question ``n`` belongs to pair ``(n - 1) // 2`` -- rows 1&2, 3&4, ...
as VLMEvalKit ``report_acc_MMVP`` pairs consecutive rows and tsb0601/MMVP
``scripts/evaluate_mllm.py`` counts a pair only when both of its questions are right.

Metrics
* ``question_acc`` (paper-compatible, Table 2 "MMVP"): mean over the 300 questions of
  ``hit`` -- VLMEvalKit ``report_acc_MMVP`` "Average".
* ``pair_acc`` (the benchmark's official metric; VLMEvalKit's "Overall"): fraction of the
  150 pairs whose two questions are both right.
* ``question_acc_corrected`` / ``pair_acc_corrected``: the same with the two disputed labels of
  tsb0601/MMVP issue #14 swapped (question 279 -> B "Sitting", 280 -> A "Standing"). The
  shipped labels stay the default because the paper's numbers use them.
"""
from __future__ import annotations

import re

from .answer_parsing import llava_mcq_prompt
from .base import Sample, count_unparsed, read_csv, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row

DISPUTED_LABELS = {279: "B", 280: "A"}  # tsb0601/MMVP issue #14, by question number


def parse_mmvp_options(options: str) -> dict:
    """``"(a) Open (b) Closed"`` -> ``{'A': 'Open', 'B': 'Closed'}``."""
    parts = re.split(r"\(([a-z])\)\s*", options.strip())
    return {parts[i].upper(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def parse_mmvp_answer(answer: str) -> str:
    """``"(a)"`` -> ``"A"``."""
    m = re.search(r"\(?([a-zA-Z])\)?", answer.strip())
    return m.group(1).upper() if m else answer.strip().upper()


def pair_scores(hits: dict) -> tuple[float, float]:
    """(question accuracy, pair accuracy) of ``{question number: hit}``; pair = (n - 1) // 2."""
    if not hits:
        return float("nan"), float("nan")
    pairs: dict = {}
    for n, h in hits.items():
        pairs.setdefault((n - 1) // 2, []).append(bool(h))
    return (sum(map(bool, hits.values())) / len(hits),
            sum(all(v) for v in pairs.values()) / len(pairs))


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
            first = min(int(float(s.qid)) for s in samples)
            for s in samples:
                s.meta["number"] = int(float(s.qid)) - first + 1
            return samples
        img_dir = next((path.parent / d for d in ("MMVP Images", "images", "MMVP_Images")
                        if (path.parent / d).is_dir()), path.parent / "MMVP Images")
        samples = []
        for row in read_csv(path):
            idx = int(row["Index"])
            options = parse_mmvp_options(row["Options"])
            samples.append(Sample(
                qid=str(idx), prompt=llava_mcq_prompt(row["Question"].strip(), options),
                gold=parse_mmvp_answer(row["Correct Answer"]),
                image=str(img_dir / f"{idx}.jpg"), image_kind="path",
                choices=options, meta={"number": idx}))
        return samples

    def metrics(self, records: list[dict]) -> dict:
        hits = {int(r["meta"]["number"]): bool(r["correct"]) for r in records}
        fixed = dict(hits)
        for r in records:
            n = int(r["meta"]["number"])
            if n in DISPUTED_LABELS:
                fixed[n] = r.get("parsed") == DISPUTED_LABELS[n]
        q, p = pair_scores(hits)
        qc, pc = pair_scores(fixed)
        return {"question_acc": q, "pair_acc": p, "question_acc_corrected": qc,
                "pair_acc_corrected": pc, "n": len(records),
                "n_pairs": len({(n - 1) // 2 for n in hits}),
                "n_unparsed": count_unparsed(records)}
