"""MMMU validation (900 questions, 30 subjects).

Files (either):
* VLMEvalKit ``MMMU_DEV_VAL.tsv`` (``index, image (base64 or list), question, A.., answer,
  split ('dev'|'validation'), category, question_type?``); only ``split == validation`` is
  scored unless ``split='all'``.
* The benchmark's Hugging Face release ``MMMU/MMMU``: ``<Subject>/validation-*.parquet`` (or
  the same rows as JSON/JSONL), fields ``id, question, options`` (a Python-list string),
  ``answer, question_type ('multiple-choice'|'open'), image_1 .. image_7``.

Paper-compatible (Table 1 "MMMU_Val", VLMEvalKit ``MMMU_DEV_VAL`` exact matching):
* ``MMMU_preproc``: an open question (no option A) becomes a two-option question with
  ``A = <gold answer>``, ``B = 'Other Answers'`` and gold letter ``A``; a gold answer that is
  not a letter is mapped to ``A`` (``vlmeval/dataset/utils/multiple_choice.py``).
* prompt: VLMEvalKit's LLaVA MCQ prompt over these options (the ``<image k>`` tags stay in
  the text; only the first image is passed to a single-image model).
* parse: ``can_infer``; ``accuracy`` = mean(hit) over the validation split (fraction).

Official (``official_acc``; MMMU ``mmmu/utils/eval_utils.py``): the same outputs parsed with
``parse_multi_choice_response`` (multiple choice; MMMU picks a random option when nothing
parses -- here a random choice seeded by the question id, and the count of such picks is
``n_random_fallback``) or ``parse_open_response`` + ``eval_open`` (open questions, against
the gold answer text). MMMU's own prompt format is ``question\\n\\n(A) x\\n(B) y\\n\\nAnswer with
the option's letter from the given choices directly.`` (``configs/llava1.5.yaml``); pass
``prompt_style='official'`` to use it.
"""
from __future__ import annotations

import ast
import hashlib
import random
from pathlib import Path

from .answer_parsing import (LETTERS, llava_mcq_prompt, mmmu_eval_open, mmmu_parse_multi_choice,
                             mmmu_parse_open)
from .base import (Sample, accuracy, count_unparsed, group_accuracy, hf_image, option_columns,
                   read_records, read_vlmevalkit_tsv, register)
from .mcq import MCQBenchmark


def mmmu_official_prompt(question: str, options: dict, open_question: bool) -> str:
    if open_question:
        return f"{question}\n\nAnswer the question using a single word or phrase."
    lines = "\n".join(f"({k}) {v}" for k, v in options.items())
    return f"{question}\n\n{lines}\n\nAnswer with the option's letter from the given choices directly."


def seeded_choice(qid: str, choices: list[str]) -> str:
    seed = int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16)
    return random.Random(seed).choice(choices)


@register
class MMMU(MCQBenchmark):
    name = "mmmu"
    title = "MMMU_Val"
    vlmevalkit_key = "MMMU_DEV_VAL"
    primary = "accuracy"
    paper_columns = {"MMMU_Val": "accuracy"}
    max_new_tokens = 64
    subdirs = ("mmmu", "MMMU")
    expected_files = ("MMMU_DEV_VAL.tsv (VLMEvalKit)",
                      "<Subject>/validation-*.parquet (HF MMMU/MMMU)")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/MMMU_DEV_VAL.tsv ; "
                 "https://huggingface.co/datasets/MMMU/MMMU")

    def load(self, data_root) -> list[Sample]:
        tsv = self.find(data_root, ["MMMU_DEV_VAL.tsv"], required=False)
        if tsv is not None:
            rows = read_vlmevalkit_tsv(tsv)
            if self.options.get("split", "validation") != "all":
                rows = [r for r in rows if (r.get("split") or "validation") == "validation"]
            return [self._from_tsv(r) for r in rows]
        files = []
        for d in self.search_dirs(data_root):
            files += sorted(d.glob("*/validation-*.parquet")) + sorted(d.glob("validation*.json*"))
            if files:
                break
        if not files:
            self.find(data_root, ["MMMU_DEV_VAL.tsv"])  # raises
        return [self._from_hf(r, f) for f in files for r in read_records(f)]

    def _from_tsv(self, r: dict) -> Sample:
        opts = option_columns(r)
        open_q = "A" not in opts
        gold_text = str(r.get("answer"))
        if open_q:  # MMMU_preproc
            opts = {"A": gold_text, "B": "Other Answers"}
        gold = gold_text.strip() if gold_text.strip() in LETTERS and not open_q else "A"
        image, kind = r.get("image"), "base64"
        return Sample(qid=str(r["index"]), prompt=llava_mcq_prompt(str(r["question"]), opts,
                                                                   r.get("hint")),
                      gold=gold, image=image, image_kind=kind, choices=opts,
                      meta={"category": r.get("category"), "split": r.get("split"),
                            "question_type": "open" if open_q else "multiple-choice",
                            "gold_text": gold_text})

    def _from_hf(self, r: dict, path: Path) -> Sample:
        raw_opts = r.get("options") or "[]"
        options = ast.literal_eval(raw_opts) if isinstance(raw_opts, str) else list(raw_opts)
        open_q = r.get("question_type") == "open" or not options
        opts = {LETTERS[i]: str(o) for i, o in enumerate(options)}
        gold_text = r["answer"]
        official = self.options.get("prompt_style") == "official"
        if official:
            prompt = mmmu_official_prompt(r["question"], opts, open_q)
        else:
            vopts = {"A": str(gold_text), "B": "Other Answers"} if open_q else opts
            prompt = llava_mcq_prompt(r["question"], vopts)
        if open_q and not official:
            opts = {"A": str(gold_text), "B": "Other Answers"}
        gold = str(gold_text) if (not open_q and str(gold_text) in LETTERS) else "A"
        image, kind = hf_image(r.get("image_1")) if r.get("image_1") is not None else (None, "path")
        subject = path.parent.name if path.suffix == ".parquet" else None
        return Sample(qid=str(r["id"]), prompt=prompt, gold=gold, image=image, image_kind=kind,
                      choices=opts,
                      meta={"category": subject or str(r["id"]).split("_")[1],
                            "split": "validation",
                            "question_type": "open" if open_q else "multiple-choice",
                            "gold_text": gold_text})

    def official_correct(self, record: dict) -> tuple[bool, bool]:
        """(correct, used_random_fallback) under MMMU's own parsing rules."""
        meta, raw = record["meta"], record.get("raw") or ""
        if meta.get("question_type") == "open":
            gold = meta.get("gold_text")
            try:
                gold = ast.literal_eval(gold) if isinstance(gold, str) and gold.startswith("[") else gold
            except (ValueError, SyntaxError):
                pass
            return mmmu_eval_open(gold, mmmu_parse_open(raw)), False
        choices = record.get("choices") or {}
        pred = mmmu_parse_multi_choice(raw, list(choices), choices)
        fallback = pred is None
        if fallback:
            pred = seeded_choice(str(record["qid"]), list(choices) or ["A"])
        return pred == record["gold"], fallback

    def metrics(self, records: list[dict]) -> dict:
        out = {"accuracy": accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records),
               "by_category": group_accuracy(records, lambda r: r["meta"].get("category"))}
        official = [self.official_correct(r) for r in records]
        out["official_acc"] = (sum(c for c, _ in official) / len(official)) if official else float("nan")
        out["n_random_fallback"] = sum(f for _, f in official)
        return out
