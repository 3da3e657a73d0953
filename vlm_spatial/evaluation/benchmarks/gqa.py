"""GQA testdev-balanced (12,578 questions): Overall and the structural types of Table 5.

Files (any one of):
* VLMEvalKit ``GQA_TestDev_Balanced.tsv`` (``index, image, question, answer[, category]``).
* GQA's official ``testdev_balanced_questions.json`` (``{qid: {imageId, question, answer,
  fullAnswer, types: {structural, semantic, detailed}, ...}}``) with images
  ``images/<imageId>.jpg``; LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (``question_id, image,
  text, category``), if present beside it, fixes the question order and image names.

Prompt (paper-compatible, VLMEvalKit ``ImageVQADataset.build_prompt``; LLaVA adds nothing for
VQA): ``question + "\\nAnswer the question using a single word or phrase."`` -- the same text
as LLaVA's ``llava_gqa_testdev_balanced.jsonl``.

Scoring
* paper-compatible (``accuracy``, Tables 2 and 5, percent): VLMEvalKit
  ``vqa_eval.process_line(method='accuracy')``: ``pred.strip().lower() == gold.strip().lower()``
  -- strict: ``"Yes."`` does not match ``yes``. Per structural type (choose / compare / logical
  / query / verify) the same rule within the type: ``acc_choose`` ...
* official (``official_accuracy`` and ``official_<type>``): LLaVA's
  ``scripts/convert_gqa_for_eval.py`` normalisation ``text.rstrip('.').lower()`` followed by
  GQA's ``eval.py`` exact comparison ``prediction == answer`` and its per-type accuracy
  (structural and semantic types).
Types need the official questions json (or a TSV ``category`` column holding them).
"""
from __future__ import annotations

from pathlib import Path

from .base import (Benchmark, Sample, accuracy, count_unparsed, group_accuracy, read_json,
                   read_jsonl, read_vlmevalkit_tsv, register)

SUFFIX = "\nAnswer the question using a single word or phrase."
STRUCTURAL = ("choose", "compare", "logical", "query", "verify")


def gqa_official_normalize(text: str) -> str:
    """LLaVA convert_gqa_for_eval: strip trailing periods, lower-case."""
    return str(text).rstrip(".").lower()


@register
class GQA(Benchmark):
    name = "gqa"
    title = "GQA"
    vlmevalkit_key = "GQA_TestDev_Balanced"
    primary = "accuracy"
    scale = "percent"
    paper_columns = {"GQA Overall": "accuracy", "GQA Choose": "acc_choose",
                     "GQA Compare": "acc_compare", "GQA Logical": "acc_logical",
                     "GQA Query": "acc_query", "GQA Verify": "acc_verify"}
    max_new_tokens = 16  # answers are compared whole: one longer than 16 tokens is wrong cut or not
    subdirs = ("gqa", "GQA")
    expected_files = ("GQA_TestDev_Balanced.tsv (VLMEvalKit)",
                      "testdev_balanced_questions.json + images/ (GQA official release)")
    published = ("https://cs.stanford.edu/people/dorarad/gqa/download.html ; "
                 "https://opencompass.openxlab.space/utils/VLMEval/GQA_TestDev_Balanced.tsv")

    def load(self, data_root) -> list[Sample]:
        tsv = self.find(data_root, ["GQA_TestDev_Balanced.tsv"], required=False)
        if tsv is not None:
            return [Sample(qid=str(r["index"]), prompt=str(r["question"]) + SUFFIX,
                           gold=str(r["answer"]), image=r.get("image"), image_kind="base64",
                           meta={"structural": r.get("category")})
                    for r in read_vlmevalkit_tsv(tsv)]
        qpath = self.find(data_root, ["testdev_balanced_questions.json"])
        questions = read_json(qpath)
        img_dir = next((d / "images" for d in [qpath.parent, *qpath.parents] if (d / "images").is_dir()),
                       qpath.parent / "images")
        llava = self.find(data_root, ["llava_gqa_testdev_balanced.jsonl"], required=False)
        order = ([(str(r["question_id"]), r["image"], r["text"]) for r in read_jsonl(llava)]
                 if llava else
                 [(qid, f"{q['imageId']}.jpg", q["question"] + SUFFIX) for qid, q in questions.items()])
        samples = []
        for qid, image, text in order:
            q = questions.get(qid)
            if q is None:
                raise ValueError(f"GQA: question {qid} of {llava} is not in {qpath}")
            types = q.get("types", {})
            samples.append(Sample(qid=qid, prompt=text, gold=q["answer"],
                                  image=str(Path(img_dir) / image), image_kind="path",
                                  meta={"structural": types.get("structural"),
                                        "semantic": types.get("semantic")}))
        return samples

    def parse(self, sample: Sample, raw: str):
        return None if raw is None else str(raw).strip()

    def is_correct(self, sample: Sample, parsed) -> bool:
        return parsed is not None and parsed.strip().lower() == str(sample.gold).strip().lower()

    def metrics(self, records: list[dict]) -> dict:
        def official(r):
            raw = r.get("raw_output")
            return raw is not None and gqa_official_normalize(raw) == r["gold"]

        out = {"accuracy": 100 * accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records)}
        off = [dict(r, correct=official(r)) for r in records]
        out["official_accuracy"] = 100 * accuracy(off)
        if any(r["meta"].get("structural") for r in records):
            strict = group_accuracy(records, lambda r: r["meta"].get("structural"))
            loose = group_accuracy(off, lambda r: r["meta"].get("structural"))
            for t in STRUCTURAL:
                if t in strict:
                    out[f"acc_{t}"] = 100 * strict[t]
                    out[f"official_{t}"] = 100 * loose[t]
            out["n_by_structural"] = {t: sum(r["meta"].get("structural") == t for r in records)
                                      for t in STRUCTURAL}
        if any(r["meta"].get("semantic") for r in records):
            out["official_by_semantic"] = {k: 100 * v for k, v in group_accuracy(
                off, lambda r: r["meta"].get("semantic")).items()}
        return out
