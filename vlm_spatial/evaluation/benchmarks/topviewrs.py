"""TopViewRS (Li et al., EMNLP 2024): multiple-choice spatial reasoning over top-view maps.

Files (either):
* VLMEvalKit ``TopViewRS.tsv`` (``index, image, question, A.., answer, category[, l2-category]``).
* The Hugging Face release ``chengzu/topviewrs`` (``released_realistic_datasets.json`` /
  ``released_semantic_datasets.json``, images from ``data.zip``): a JSON list of rows with a
  question, a list of choices (``choices`` / ``options``), the answer (a letter, or the text
  of the right choice), an image path (``image`` / ``image_path`` / ``img``) and a task
  name (``sub_task`` / ``task`` / ``category``). This layout was not available to read (see
  tests/fixtures/benchmarks/SAMPLES_README.md), so the JSON reader accepts these field names
  and is tested on a hand-written file only.

Prompt: VLMEvalKit's LLaVA MCQ prompt. Parse: VLMEvalKit ``can_infer`` (exact matching).
Metrics (VLMEvalKit ``TopViewRS.evaluate`` / ``report_topviewrs_acc``):
* ``accuracy`` (paper-compatible, Table 2 "Top-ViewRS", fraction): mean(hit), "Overall";
  ``by_category`` / ``by_l2-category`` the same per group.
* ``partial_match`` ("Overall_PM", the TopViewRS paper's PM): per question
  ``|W(pred) & W(gold)| / max(|W(pred)|, |W(gold)|)`` where ``W`` is the set of lower-cased
  words of an option text; the predicted option is read as VLMEvalKit reads its match log --
  the raw output when ``can_infer`` succeeded (text between the first ``[`` and ``]``, else its
  last word without trailing ``". "``), 0 when it failed or names no option.
"""
from __future__ import annotations

from .answer_parsing import LETTERS, llava_mcq_prompt
from .base import Sample, read_json, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row


def partial_match(raw, parsed, choices: dict, gold: str) -> float:
    """TopViewRS partial-match score of one answer (see the module docstring), in [0, 1]."""
    if parsed is None or raw is None:
        return 0.0
    log = str(raw)
    if "[" in log and "]" in log:
        key = log[log.index("[") + 1:log.index("]")]
    else:
        words = log.rstrip(". ").split()
        key = words[-1] if words else ""
    pred_text, gold_text = choices.get(key, ""), choices.get(gold, "")
    if not pred_text or not gold_text:
        return 0.0
    pw, gw = set(str(pred_text).lower().split()), set(str(gold_text).lower().split())
    return len(pw & gw) / max(len(pw), len(gw)) if max(len(pw), len(gw)) else 0.0


@register
class TopViewRS(MCQBenchmark):
    name = "topviewrs"
    title = "TopViewRS"
    vlmevalkit_key = "TopViewRS"
    primary = "accuracy"
    paper_columns = {"Top-ViewRS": "accuracy"}
    group_keys = ("category", "l2-category")
    subdirs = ("topviewrs", "TopViewRS")
    expected_files = ("TopViewRS.tsv (VLMEvalKit)",
                      "released_realistic_datasets.json / released_semantic_datasets.json (HF chengzu/topviewrs)")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/TopViewRS.tsv ; "
                 "https://huggingface.co/datasets/chengzu/topviewrs")

    def load(self, data_root) -> list[Sample]:
        tsv = self.find(data_root, ["TopViewRS.tsv"], required=False)
        if tsv is not None:
            return [sample_from_vlmevalkit_row(r) for r in read_vlmevalkit_tsv(tsv)]
        paths = [p for p in (self.find(data_root, [f], required=False) for f in
                             ("released_realistic_datasets.json", "released_semantic_datasets.json"))
                 if p is not None]
        if not paths:
            self.find(data_root, ["TopViewRS.tsv"])  # raises, naming every accepted file
        samples = []
        for path in paths:
            for i, r in enumerate(read_json(path)):
                choices = r.get("choices") or r.get("options")
                opts = (dict(choices) if isinstance(choices, dict)
                        else {LETTERS[j]: str(c) for j, c in enumerate(choices)})
                ans = str(r["answer"]).strip()
                gold = ans if ans in opts else next((k for k, v in opts.items() if v == ans), None)
                if gold is None:
                    raise ValueError(f"{path}: answer {ans!r} of row {i} is not among {opts}")
                img = r.get("image") or r.get("image_path") or r.get("img")
                samples.append(Sample(
                    qid=f"{path.stem}_{r.get('id', i)}", prompt=llava_mcq_prompt(r["question"], opts),
                    gold=gold, image=str(path.parent / img) if img else None, image_kind="path",
                    choices=opts,
                    meta={"category": r.get("sub_task") or r.get("task") or r.get("category"),
                          "l2-category": path.stem}))
        return samples

    def metrics(self, records: list[dict]) -> dict:
        out = super().metrics(records)
        pm = [partial_match(r.get("raw_output"), r.get("parsed"),
                            r.get("choices") or {}, r["gold"]) for r in records]
        out["partial_match"] = sum(pm) / len(pm) if pm else float("nan")
        return out
