"""The built-in synthetic spatial set (``vlm_spatial.data.synthetic``): accuracy per family.

File: the evaluation split written by ``vlm_spatial.data.synthetic.generate`` --
``test_eval.json`` (or ``val_eval.json``; ``file=`` picks another), a JSON list of
``{question_id, image (path relative to the dataset dir), question, answer, family,
[choices], objects}``, under ``<data_root>/synthetic/`` or ``<data_root>``.

Prompt: the question exactly as generated (the models are trained on that phrasing; the
``relation_mc`` questions already list ``(A) ..\n(B) ..`` in CV-Bench style). Gold: the
answer; for questions with ``choices`` it is the letter (the option text is accepted too).
Parse: multiple choice by VLMEvalKit ``can_infer`` over ``{A: choices[0], B: choices[1], ..}``;
open answers by the VQA normalisation (case, punctuation, articles, number words:
``"Two."`` == ``"2"``).
Metrics: ``accuracy`` over all questions and ``by_family``. No paper number exists for it.
"""
from __future__ import annotations

from .answer_parsing import LETTERS, vlmevalkit_mcq_extract, vqa_normalize
from .base import (Benchmark, Sample, accuracy, count_unparsed, group_accuracy, read_records,
                   register)


@register
class Synthetic(Benchmark):
    name = "synthetic"
    title = "Synthetic spatial"
    primary = "accuracy"
    paper_columns = {}
    max_new_tokens = 16  # one-word answers; no harness to match
    subdirs = ("synthetic", "synthetic_spatial")
    expected_files = ("test_eval.json / val_eval.json (written by python -m vlm_spatial.data.synthetic)",)
    published = "generated locally by vlm_spatial.data.synthetic"

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, [self.options.get("file", "test_eval.json"), "val_eval.json",
                                     "*eval*.json", "*eval*.jsonl"])
        samples = []
        for i, r in enumerate(read_records(path)):
            choices = r.get("choices")
            meta = {"family": r.get("family")}
            image = str(path.parent / r["image"]) if r.get("image") else None
            qid = str(r.get("question_id", i))
            if choices:
                opts = (dict(choices) if isinstance(choices, dict)
                        else {LETTERS[j]: str(c) for j, c in enumerate(choices)})
                ans = str(r["answer"]).strip()
                gold = ans if ans in opts else next((k for k, v in opts.items()
                                                     if v.strip().lower() == ans.lower()), None)
                if gold is None:
                    raise ValueError(f"{path}: answer {ans!r} of {qid} is not among {opts}")
                samples.append(Sample(qid=qid, prompt=r["question"], gold=gold, image=image,
                                      choices=opts, meta=meta))
            else:
                samples.append(Sample(qid=qid, prompt=r["question"],
                                      gold=vqa_normalize(r["answer"]), image=image, meta=meta))
        return samples

    def parse(self, sample: Sample, raw: str):
        if sample.choices:
            return vlmevalkit_mcq_extract(raw, sample.choices, self.rules)
        if raw is None or not str(raw).strip():
            return None
        return vqa_normalize(raw)

    def metrics(self, records: list[dict]) -> dict:
        return {"accuracy": accuracy(records), "n": len(records),
                "n_unparsed": count_unparsed(records),
                "by_family": group_accuracy(records, lambda r: r["meta"].get("family"))}
