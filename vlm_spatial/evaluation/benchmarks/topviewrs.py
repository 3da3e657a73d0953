"""TopViewRS (Li et al., EMNLP 2024): multiple-choice spatial reasoning over top-view maps.

Files (either):
* VLMEvalKit ``TopViewRS.tsv`` (``index, image, question, A.., answer, category[, l2-category]``).
* The Hugging Face release ``chengzu/topviewrs`` (``released_realistic_datasets.json`` /
  ``released_semantic_datasets.json``, images from ``data.zip``): a JSON list of rows with a
  question, a list of choices (``choices`` / ``options``), the answer (a letter, or the text
  of the right choice), an image path (``image`` / ``image_path`` / ``img``) and a task
  name (``sub_task`` / ``task`` / ``category``). Neither this layout nor VLMEvalKit's TopViewRS
  class was available to read for this module (see the benchmark_samples README), so the
  JSON reader accepts these field names and is tested only on a hand-written fixture.

Prompt: VLMEvalKit's LLaVA MCQ prompt. Parse: VLMEvalKit ``can_infer``.
Metric (paper-compatible, Table 2 "Top-ViewRS"): exact-match accuracy as a fraction, with
``by_category`` (VLMEvalKit ``report_topviewrs_acc`` Overall; its partial-match column needs
multi-answer rows and is not reproduced).
"""
from __future__ import annotations

from .answer_parsing import LETTERS, llava_mcq_prompt
from .base import Sample, read_json, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row


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
    published = "https://huggingface.co/datasets/chengzu/topviewrs"

    def load(self, data_root) -> list[Sample]:
        tsv = self.find(data_root, ["TopViewRS.tsv"], required=False)
        if tsv is not None:
            return [sample_from_vlmevalkit_row(r) for r in read_vlmevalkit_tsv(tsv)]
        paths = [p for p in (self.find(data_root, [f], required=False) for f in
                             ("released_realistic_datasets.json", "released_semantic_datasets.json"))
                 if p is not None]
        if not paths:
            self.find(data_root, ["TopViewRS.tsv"])  # raises
        samples = []
        for path in paths:
            for i, r in enumerate(read_json(path)):
                choices = r.get("choices") or r.get("options")
                opts = (dict(choices) if isinstance(choices, dict)
                        else {LETTERS[j]: str(c) for j, c in enumerate(choices)})
                ans = str(r["answer"]).strip()
                gold = ans if ans in opts else next((k for k, v in opts.items() if v == ans), ans)
                img = r.get("image") or r.get("image_path") or r.get("img")
                samples.append(Sample(
                    qid=f"{path.stem}_{r.get('id', i)}", prompt=llava_mcq_prompt(r["question"], opts),
                    gold=gold, image=str(path.parent / img) if img else None, image_kind="path",
                    choices=opts,
                    meta={"category": r.get("sub_task") or r.get("task") or r.get("category"),
                          "l2-category": path.stem}))
        return samples
