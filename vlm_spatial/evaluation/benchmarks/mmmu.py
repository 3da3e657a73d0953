"""MMMU validation (900 questions, 30 subjects).

Files (either):
* VLMEvalKit ``MMMU_DEV_VAL.tsv`` (``index, image (base64 or a list), question, A.., answer,
  split ('dev'|'validation'), category, ...``; open questions have no option columns and the
  answer text in ``answer``); only ``split == validation`` is scored unless ``split='all'``.
* The benchmark's Hugging Face release ``MMMU/MMMU``: ``<Subject>/validation-*.parquet``
  (fields ``id, question, options`` (a Python-list string), ``answer, question_type
  ('multiple-choice'|'open'), image_1 .. image_7``).

Paper-compatible (Table 1 "MMMU_Val", VLMEvalKit ``MMMU_DEV_VAL`` with exact matching):
* prompt: VLMEvalKit's LLaVA prompt -- with options the MCQ form; an open question has none,
  so it is ``question + "\\nAnswer the question directly."``. The ``<image k>`` tags stay in the
  text; the first image is given to the model.
* scoring (``multiple_choice.py::MMMU_preproc`` + ``mcq_vanilla_eval``): an open question is
  scored as a two-option question ``A = <answer text>``, ``B = 'Other Answers'``; the gold
  letter is the ``answer`` cell when it is one upper-case letter and ``'A'`` otherwise (so an
  open question whose answer is a bare letter, e.g. ``'C'``, can never be right -- an upstream
  quirk reproduced on purpose). Parse: ``can_infer``; ``accuracy`` = mean(hit) (fraction).

Official (``official_acc``; MMMU ``eval/eval_utils.py``): multiple-choice outputs parsed with
``parse_multi_choice_response`` over the real options (MMMU picks a random option when nothing
parses -- here a pick seeded by the question id; ``n_random_fallback`` counts them), open
outputs with ``parse_open_response`` + ``eval_open`` against the answer text.
``score_mmmu_outputs`` applies the same rules to MMMU's own files (``output.json`` rows and
``answer_dict_val.json``). MMMU's own LLaVA prompt (``configs/llava1.5.yaml``:
``question\\n\\n(A) x\\n(B) y\\n\\nAnswer with the option's letter from the given choices
directly.``; open: ``question\\n\\nAnswer the question using a single word or phrase.``) is
used with ``prompt_style='official'``.
"""
from __future__ import annotations

import ast
import hashlib
import random

from .answer_parsing import (LETTERS, llava_mcq_prompt, mmmu_eval_open, mmmu_parse_multi_choice,
                             mmmu_parse_open)
from .base import (Sample, accuracy, count_unparsed, group_accuracy, hf_image, option_columns,
                   read_records, read_vlmevalkit_tsv, register)
from .mcq import MCQBenchmark


def mmmu_official_prompt(question: str, options: dict) -> str:
    """MMMU's LLaVA-1.5 prompt (``configs/llava1.5.yaml``); no options = open question."""
    if not options:
        return f"{question}\n\nAnswer the question using a single word or phrase."
    lines = "\n".join(f"({k}) {v}" for k, v in options.items())
    return f"{question}\n\n{lines}\n\nAnswer with the option's letter from the given choices directly."


def seeded_choice(qid: str, choices: list[str]) -> str:
    """MMMU's random pick for an unparseable answer, made reproducible per question id."""
    seed = int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16)
    return random.Random(seed).choice(choices)


def _gold_text(value):
    """An answer cell as MMMU compares it: a list if it is a list literal, else the string."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def official_correct(qid: str, question_type: str, response, options: dict, gold) -> tuple:
    """(correct, used_random_fallback) of one response under MMMU's own parsing rules.

    ``options``: letter -> option text (empty for open questions); ``gold``: the gold letter
    (multiple choice) or answer text / list of texts (open).
    """
    response = "" if response is None else str(response)
    if question_type != "multiple-choice":
        return mmmu_eval_open(_gold_text(gold), mmmu_parse_open(response)), False
    pred = mmmu_parse_multi_choice(response, list(options), options)
    if pred is None:
        return seeded_choice(qid, list(options) or ["A"]) == gold, True
    return pred == gold, False


def score_mmmu_outputs(outputs: list[dict], answer_dict: dict) -> dict:
    """MMMU ``main_eval_only`` on MMMU's own files.

    ``outputs``: rows of an ``output.json`` (``id, question_type, all_choices, index2ans,
    response``); ``answer_dict``: ``answer_dict_val.json`` (``{id: {question_type,
    ground_truth}}``). Returns ``{"accuracy", "n", "n_random_fallback", "by_subject"}``.
    """
    hits, fallback, by_subject = [], 0, {}
    for row in outputs:
        gold = answer_dict[row["id"]]
        options = {c: row["index2ans"][c] for c in row.get("all_choices", [])}
        ok, rnd = official_correct(row["id"], gold["question_type"], row["response"], options,
                                   gold["ground_truth"])
        hits.append(ok)
        fallback += rnd
        subject = row["id"].split("_", 1)[1].rsplit("_", 1)[0]
        by_subject.setdefault(subject, []).append(ok)
    return {"accuracy": sum(hits) / len(hits) if hits else float("nan"), "n": len(hits),
            "n_random_fallback": fallback,
            "by_subject": {k: sum(v) / len(v) for k, v in sorted(by_subject.items())}}


@register
class MMMU(MCQBenchmark):
    name = "mmmu"
    title = "MMMU_Val"
    vlmevalkit_key = "MMMU_DEV_VAL"
    primary = "accuracy"
    paper_columns = {"MMMU_Val": "accuracy"}
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
            return [self._sample(str(r["index"]), r["question"], option_columns(r), r["answer"],
                                 r.get("image"), "base64", r.get("category"), r.get("hint"))
                    for r in rows]
        files = []
        for d in self.search_dirs(data_root):
            files = sorted(d.glob("*/validation-*.parquet"))
            if files:
                break
        if not files:
            self.find(data_root, ["MMMU_DEV_VAL.tsv"])  # raises, naming every accepted file
        samples = []
        for f in files:
            for r in read_records(f):
                raw_opts = r.get("options") or "[]"
                opts = ast.literal_eval(raw_opts) if isinstance(raw_opts, str) else list(raw_opts)
                image, kind = hf_image(r.get("image_1"))
                samples.append(self._sample(str(r["id"]), r["question"],
                                            {LETTERS[i]: str(o) for i, o in enumerate(opts)},
                                            r["answer"], image, kind, f.parent.name))
        return samples

    def _sample(self, qid, question, options: dict, answer, image, kind, category,
                hint=None) -> Sample:
        """One question: prompt for the chosen style, VLMEvalKit's scoring choices and gold."""
        answer = str(answer)
        if self.options.get("prompt_style") == "official":
            prompt = mmmu_official_prompt(str(question), options)
        else:
            prompt = llava_mcq_prompt(str(question), options, hint)
        scoring = options if options else {"A": answer, "B": "Other Answers"}
        gold = answer if answer in LETTERS else "A"
        return Sample(qid=qid, prompt=prompt, gold=gold, image=image, image_kind=kind,
                      choices=scoring,
                      meta={"category": category,
                            "question_type": "multiple-choice" if options else "open",
                            "options": options, "answer": answer})

    def metrics(self, records: list[dict]) -> dict:
        out = {"accuracy": accuracy(records), "n": len(records),
               "n_unparsed": count_unparsed(records),
               "by_category": group_accuracy(records, lambda r: r["meta"].get("category"))}
        official = [official_correct(str(r["qid"]), r["meta"]["question_type"], r.get("raw_output"),
                                     r["meta"]["options"], r["meta"]["answer"]) for r in records]
        out["official_acc"] = (sum(c for c, _ in official) / len(official)) if official else float("nan")
        out["n_random_fallback"] = sum(f for _, f in official)
        return out
