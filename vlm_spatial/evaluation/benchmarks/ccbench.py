"""CCBench (MMBench's Chinese-culture set, 510 questions) with circular evaluation.

Files (either):
* VLMEvalKit ``CCBench.tsv``: ``index, question, A.., answer, category, image (base64)``,
  read as VLMEvalKit reads it: every row is one prompt and rows are grouped into questions by
  ``g_index`` (or ``index % 1e6`` when there is no ``g_index`` column) -- the circular copies
  are whatever rows the file holds (``mcq_circular_eval``).
* A JSON/JSONL list of rows with ``question, A.., answer, category`` and an image field
  (``image`` base64, or ``sample_image`` / ``image_path`` relative to the file) -- the layout
  of open-compass/MMBench ``samples/`` (see tests/fixtures/benchmarks). Here the circular copies
  are made as MMBench's paper (sec. 3.2) describes: a question with N options is asked N
  times, rotation k putting option ``(j + k) mod N`` into slot ``j``, the gold letter moved
  with it.

Prompt per copy: VLMEvalKit's LLaVA MCQ prompt (Chinese suffix ``请直接回答选项字母。`` for
Chinese text). Parse: ``can_infer``.

Metrics (exact matching: ``prefetch_circular_group``; a copy that does not parse fails the group)
* ``circular_acc`` (paper-compatible, Table 1 "CCBench"): fraction of questions all of whose
  copies are answered correctly.
* ``vanilla_acc``: accuracy of the un-rotated copies alone; ``rotation_acc``: over all copies;
  ``by_category``: circular accuracy per category.
"""
from __future__ import annotations

from pathlib import Path

from .answer_parsing import llava_mcq_prompt
from .base import (Sample, count_unparsed, option_columns, read_records, read_vlmevalkit_tsv,
                   register)
from .mcq import MCQBenchmark


def rotations(options: dict, answer: str) -> list[tuple[dict, str]]:
    """All N circular shifts of ``options`` with the relabelled answer; shift 0 first."""
    letters = list(options)
    texts = [options[c] for c in letters]
    n = len(letters)
    gold_pos = letters.index(answer)
    out = []
    for k in range(n):
        rotated = {letters[j]: texts[(j + k) % n] for j in range(n)}
        out.append((rotated, letters[(gold_pos - k) % n]))
    return out


@register
class CCBench(MCQBenchmark):
    name = "ccbench"
    title = "CCBench"
    vlmevalkit_key = "CCBench"
    primary = "circular_acc"
    paper_columns = {"CCBench": "circular_acc"}
    subdirs = ("ccbench", "CCBench")
    expected_files = ("CCBench.tsv (VLMEvalKit)", "ccbench*.jsonl / ccbench*.json rows")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/CCBench.tsv ; "
                 "https://github.com/open-compass/MMBench")

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["CCBench.tsv", "ccbench*.jsonl", "ccbench*.json",
                                     "CCBench*.jsonl"])
        if path.suffix == ".tsv":
            samples = []
            for r in read_vlmevalkit_tsv(path):
                idx = int(float(r["index"]))
                group = int(float(r["g_index"])) if r.get("g_index") is not None else idx % 1_000_000
                opts = option_columns(r)
                samples.append(Sample(
                    qid=str(idx), prompt=llava_mcq_prompt(r["question"], opts, r.get("hint")),
                    gold=str(r["answer"]).strip(), image=r.get("image"), image_kind="base64",
                    choices=opts, meta={"group": group, "rotation": int(idx != group),
                                        "category": r.get("category")}))
            return samples
        samples = []
        for i, r in enumerate(read_records(path)):
            image, kind = self._image(r, path)
            idx = int(float(r["index"])) if r.get("index") is not None else i
            for k, (rot, gold) in enumerate(rotations(option_columns(r), str(r["answer"]).strip())):
                samples.append(Sample(
                    qid=f"{idx}_r{k}", prompt=llava_mcq_prompt(r["question"], rot, r.get("hint")),
                    gold=gold, image=image, image_kind=kind, choices=rot,
                    meta={"group": idx, "rotation": k, "category": r.get("category")}))
        return samples

    @staticmethod
    def _image(r: dict, path: Path):
        if r.get("image") is not None:
            return r["image"], "base64"
        rel = r.get("image_path") or r.get("sample_image")
        return (str(path.parent / rel) if rel else None), "path"

    def metrics(self, records: list[dict]) -> dict:
        groups: dict = {}
        for r in records:
            groups.setdefault(r["meta"]["group"], []).append(r)
        circ = {g: all(bool(x["correct"]) for x in rs) for g, rs in groups.items()}
        cats: dict = {}
        for g, rs in groups.items():
            cats.setdefault(rs[0]["meta"].get("category"), []).append(circ[g])
        vanilla = [bool(r["correct"]) for r in records if r["meta"]["rotation"] == 0]
        return {
            "circular_acc": sum(circ.values()) / len(circ) if circ else float("nan"),
            "vanilla_acc": sum(vanilla) / len(vanilla) if vanilla else float("nan"),
            "rotation_acc": (sum(bool(r["correct"]) for r in records) / len(records)
                             if records else float("nan")),
            "by_category": {str(c): sum(v) / len(v) for c, v in sorted(cats.items(),
                                                                      key=lambda kv: str(kv[0]))},
            "n": len(circ), "n_prompts": len(records), "n_unparsed": count_unparsed(records),
        }
