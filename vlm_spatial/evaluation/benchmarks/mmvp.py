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
* ``question_acc`` (paper-compatible, Table 2 "MMVP"): mean over the 300 questions of ``hit``
  -- VLMEvalKit's "Overall" in the 2025 revisions (``report_acc``), its "Average" since
  b77b16fb (2025-12-20, ``report_acc_MMVP``).
* ``pair_acc`` (the benchmark's official metric; VLMEvalKit's "Overall" since b77b16fb):
  fraction of the 150 pairs whose two questions are both right.
* ``label_sets``: ``{name: {"question_acc", "pair_acc"}}`` under each named label set of
  `LABEL_SETS` -- the file's labels (``mmvp-original``, what the paper and VLMEvalKit score),
  tsb0601/MMVP issue #14's fix of questions 279/280 (``mmvp-corrected-279-280``), and
  lmms-eval's ``GROUND_TRUTH_CORRECTIONS`` (``lmms-eval``: 279/280 and the elephant-tusk pair
  99/100; ``lmms_eval/tasks/mmvp/utils.py``, lmms-eval issue #1018, tsb0601/MMVP issue #30).
"""
from __future__ import annotations

import re

from .answer_parsing import llava_mcq_prompt
from .base import Sample, count_unparsed, read_csv, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row

# Gold letters that replace the file's, by question number 1..300.
LABEL_SETS = {
    "mmvp-original": {},
    "mmvp-corrected-279-280": {279: "B", 280: "A"},           # tsb0601/MMVP issue #14
    "lmms-eval": {99: "B", 100: "A", 279: "B", 280: "A"},     # lmms-eval tasks/mmvp/utils.py
}


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
        q, p = pair_scores(hits)
        label_sets = {}
        for name, fixes in LABEL_SETS.items():
            relabelled = dict(hits)
            for r in records:
                n = int(r["meta"]["number"])
                if n in fixes:
                    relabelled[n] = r.get("parsed") == fixes[n]
            qs, ps = pair_scores(relabelled)
            label_sets[name] = {"question_acc": qs, "pair_acc": ps}
        return {"question_acc": q, "pair_acc": p, "label_sets": label_sets, "n": len(records),
                "n_pairs": len({(n - 1) // 2 for n in hits}),
                "n_unparsed": count_unparsed(records)}
