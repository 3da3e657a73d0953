"""Shared multiple-choice benchmark behaviour (VLMEvalKit ``ImageMCQDataset`` + LLaVA prompt).

Paper-compatible mode = VLMEvalKit with ``--judge exact_matching`` and its LLaVA model wrapper:

* prompt (``vlmeval/vlm/llava/llava.py::LLaVA.build_prompt``, used because LLaVA's
  ``use_custom_prompt`` is true for every MCQ dataset)::

      [hint\\n]question\\nA. <A>\\nB. <B>...
      Answer with the option's letter from the given choices directly.

* parse: ``can_infer`` over the prediction under the benchmark's rule set (the one option letter
  written as a token, else the one option whose text it contains; which tokens and which
  lengths count is the rule set's); anything else is VLMEvalKit's ``'Z'`` -- wrong
  (``vlmeval/dataset/utils/multiple_choice.py::extract_answer_from_item`` with no judge).
* score: ``hit = (letter == answer)``, accuracy = mean(hit) as a fraction
  (``report_acc``), per ``category`` / ``l2-category`` where the file has them.

Row format (VLMEvalKit TSV): ``index, image (base64), question, A, B, ..., answer,
[hint], [category], [l2-category], [split]``.
"""
from __future__ import annotations

from typing import Optional

from .answer_parsing import llava_mcq_prompt, vlmevalkit_mcq_extract
from .base import Benchmark, Sample, accuracy, count_unparsed, group_accuracy, option_columns


def sample_from_vlmevalkit_row(row: dict, meta_keys=("category", "l2-category", "split")) -> Sample:
    """A VLMEvalKit MCQ TSV row -> Sample with the LLaVA prompt, the gold letter and the base64
    image; ``meta_keys`` columns that are present go to ``meta``."""
    options = option_columns(row)
    hint = row.get("hint") or None
    meta = {k: row[k] for k in meta_keys if row.get(k) is not None}
    return Sample(
        qid=str(row["index"]),
        prompt=llava_mcq_prompt(str(row["question"]), options, hint),
        gold=str(row["answer"]).strip() if row.get("answer") is not None else None,
        image=row.get("image"),
        image_kind="base64",
        choices=options,
        meta=meta,
    )


class MCQBenchmark(Benchmark):
    """VLMEvalKit exact-matching multiple choice; subclasses add loaders and metric groups."""

    group_keys: tuple = ("category",)

    def parse(self, sample: Sample, raw: str) -> Optional[str]:
        return vlmevalkit_mcq_extract(raw, sample.choices or {}, self.rules)

    def metrics(self, records: list[dict]) -> dict:
        out = {"accuracy": accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records)}
        for key in self.group_keys:
            if any(key in r.get("meta", {}) for r in records):
                out[f"by_{key}"] = group_accuracy(records, lambda r: r["meta"].get(key))
        return out
