"""CountBenchQA: counting questions (2-10 objects) on CountBench images; VLMEvalKit's 487.

Files (any one of):
* VLMEvalKit ``CountBenchQA.tsv`` (``index, image, question, answer``) -- the cleaned set of
  487 questions the paper's numbers fit.
* Hugging Face ``vikhyatk/CountBenchQA`` parquet (``image, text, question, number``; 491 rows;
  ``data/test-*.parquet``).
The original CountBench ``CountBench.json`` (``image_url, text, number``) has no questions and
is refused with a message saying what to use instead.

Prompt (VLMEvalKit ``CountBenchQA.build_prompt``; a VQA set, so LLaVA adds nothing):
``"<question> Note that: answer with a number directly e.g. 3. Do not include any additional text."``

Metrics
* ``accuracy``: VLMEvalKit ``CountBenchQA.evaluate``: ``str(answer) in str(prediction)`` -- a
  substring test, so ``"12"`` counts for an answer of 2 -- on the scale of the rule set's
  revision: a fraction in ``vlmevalkit-2025.09`` (d3aa188e), x100 from ``vlmevalkit-2025.09.12``
  (9cc14cd0) on. ``accuracy_scale`` says which.
* ``accuracy_fraction`` (paper-compatible, Table 2 "Count-BenchQA"): the same as a fraction, the
  paper's scale, whatever the rule set.
* ``exact_acc``: the first whole-word count in the output (digits or a number word, as
  VLMEvalKit reads TallyQA answers) equals the answer -- the exact-count rule of
  PaliGemma/Molmo-style CountBenchQA scoring. ``parsed`` holds that count.
"""
from __future__ import annotations

from .answer_parsing import count_from_text
from .base import (Benchmark, Sample, accuracy, count_unparsed, hf_image, read_records,
                   read_vlmevalkit_tsv, register)

SUFFIX = " Note that: answer with a number directly e.g. 3. Do not include any additional text."


def _count(value) -> int:
    return int(float(value))


@register
class CountBenchQA(Benchmark):
    name = "countbenchqa"
    title = "CountBenchQA"
    vlmevalkit_key = "CountBenchQA"
    primary = "accuracy"
    paper_columns = {"Count-BenchQA": "accuracy_fraction"}
    subdirs = ("countbenchqa", "CountBenchQA", "countbench")
    expected_files = ("CountBenchQA.tsv (VLMEvalKit, 487 rows)",
                      "data/test-*.parquet (HF vikhyatk/CountBenchQA, 491 rows)")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/CountBenchQA.tsv ; "
                 "https://huggingface.co/datasets/vikhyatk/CountBenchQA")

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["CountBenchQA.tsv", "test-*.parquet", "data/test-*.parquet",
                                     "CountBench.json"])
        if path.suffix == ".tsv":
            return [Sample(qid=str(r["index"]), prompt=str(r["question"]) + SUFFIX,
                           gold=_count(r["answer"]), image=r.get("image"), image_kind="base64")
                    for r in read_vlmevalkit_tsv(path)]
        rows = read_records(path)
        if rows and "question" not in rows[0]:
            raise ValueError(
                f"{path} has no 'question' field: it is the original CountBench caption list "
                "(image_url, text, number). CountBenchQA adds the questions: use VLMEvalKit's "
                f"CountBenchQA.tsv or the HF vikhyatk/CountBenchQA parquet ({self.published}).")
        samples = []
        for i, r in enumerate(rows):
            image, kind = hf_image(r.get("image"))
            samples.append(Sample(qid=str(i), prompt=str(r["question"]) + SUFFIX,
                                  gold=_count(r["number"]), image=image, image_kind=kind))
        return samples

    def parse(self, sample: Sample, raw: str):
        return count_from_text(raw)

    def correct_from_raw(self, sample: Sample, raw: str) -> bool:
        """VLMEvalKit's rule: the answer's digits appear anywhere in the raw output."""
        return raw is not None and str(sample.gold) in str(raw)

    def metrics(self, records: list[dict]) -> dict:
        exact = [dict(r, correct=r.get("parsed") is not None and r["parsed"] == r["gold"])
                 for r in records]
        fraction = accuracy(records)
        percent = self.rules.countbenchqa_percent
        return {"accuracy": 100 * fraction if percent else fraction,
                "accuracy_scale": "percent" if percent else "fraction",
                "accuracy_fraction": fraction, "exact_acc": accuracy(exact), "n": len(records),
                "n_unparsed": count_unparsed(records)}
