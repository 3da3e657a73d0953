"""TallyQA test (Acharya et al., AAAI 2019): simple and complex counting questions.

Files (either):
* The official release (manoja328/TallyQA_dataset ``tallyqa.zip``): ``test.json``, a JSON list
  of ``{answer (int), data_source, image ("VG_100K_2/2410408.jpg"), image_id, issimple (bool),
  question, question_id}``; images under ``<dir>/<image>`` (Visual Genome / COCO layout).
* VLMEvalKit ``TallyQA.tsv`` (``index, image, question, answer[, category|issimple]``).

Prompt: the counting prompt VLMEvalKit uses for its counting VQA sets,
``"<question> Note that: answer with a number directly e.g. 3. Do not include any additional
text."``. VLMEvalKit's TallyQA scoring code was not available to read; the paper-compatible
rule implemented here is VLMEvalKit's VQA normalisation (``process_answer``: punctuation,
number words -> digits, articles dropped) followed by exact match with the count.

Metrics
* ``accuracy`` (Table 2 "TallyQA", fraction): mean of that exact match over all test questions.
* official (TallyQA paper, sec. 5): ``simple_acc`` and ``complex_acc`` -- exact-count accuracy
  within ``issimple`` true / false, using the first number in the output (digits or word); and
  ``rmse``, ``simple_rmse``, ``complex_rmse`` = sqrt(mean((pred - gold)^2)) over questions
  whose output contains a number (``n_unparsed`` counts the rest, which are excluded from RMSE).
"""
from __future__ import annotations

import math

from .answer_parsing import first_number, vqa_normalize
from .base import (Benchmark, Sample, accuracy, count_unparsed, read_json, read_vlmevalkit_tsv,
                   register)

SUFFIX = " Note that: answer with a number directly e.g. 3. Do not include any additional text."


def _rmse(pairs):
    return math.sqrt(sum((p - g) ** 2 for p, g in pairs) / len(pairs)) if pairs else float("nan")


@register
class TallyQA(Benchmark):
    name = "tallyqa"
    title = "TallyQA"
    vlmevalkit_key = "TallyQA"
    primary = "accuracy"
    paper_columns = {"TallyQA": "accuracy"}
    max_new_tokens = 16
    subdirs = ("tallyqa", "TallyQA")
    expected_files = ("test.json (+ images) from tallyqa.zip (manoja328/TallyQA_dataset)",
                      "TallyQA.tsv (VLMEvalKit)")
    published = "https://github.com/manoja328/TallyQA_dataset"

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["TallyQA.tsv", "test.json", "tallyqa/test.json"])
        if path.suffix == ".tsv":
            out = []
            for r in read_vlmevalkit_tsv(path):
                flag = r.get("issimple", r.get("category"))
                simple = None if flag is None else str(flag).lower() in ("true", "1", "simple")
                out.append(Sample(qid=str(r["index"]), prompt=str(r["question"]) + SUFFIX,
                                  gold=str(int(float(r["answer"]))), image=r.get("image"),
                                  image_kind="base64", meta={"issimple": simple}))
            return out
        root = next((d for d in [path.parent, *path.parents]
                     if any((d / p).is_dir() for p in ("VG_100K", "VG_100K_2", "val2014"))),
                    path.parent)
        return [Sample(qid=str(r["question_id"]), prompt=r["question"] + SUFFIX,
                       gold=str(int(r["answer"])), image=str(root / r["image"]),
                       image_kind="path",
                       meta={"issimple": bool(r.get("issimple")),
                             "data_source": r.get("data_source")})
                for r in read_json(path)]

    def parse(self, sample: Sample, raw: str):
        n = first_number(raw)
        return None if n is None else str(n)

    def correct_from_raw(self, sample: Sample, raw: str) -> bool:
        return raw is not None and vqa_normalize(raw) == str(sample.gold)

    def metrics(self, records: list[dict]) -> dict:
        out = {"accuracy": accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records)}
        exact = [dict(r, correct=r.get("parsed") is not None and r["parsed"] == r["gold"])
                 for r in records]
        out["exact_acc"] = accuracy(exact)
        pairs = [(int(r["parsed"]), int(r["gold"]), r["meta"].get("issimple")) for r in records
                 if r.get("parsed") is not None]
        out["rmse"] = _rmse([(p, g) for p, g, _ in pairs])
        for name, flag in (("simple", True), ("complex", False)):
            sub = [r for r in exact if r["meta"].get("issimple") is flag]
            if sub:
                out[f"{name}_acc"] = accuracy(sub)
                out[f"{name}_rmse"] = _rmse([(p, g) for p, g, s in pairs if s is flag])
                out[f"n_{name}"] = len(sub)
        return out
