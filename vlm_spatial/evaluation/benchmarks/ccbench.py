"""CCBench (MMBench's Chinese-culture set, 510 questions) with circular evaluation.

Files (either):
* VLMEvalKit ``CCBench.tsv``: ``index, question, A.., answer, category, image (base64)``.
  If the file already holds the rotated copies (a ``g_index`` column, or indices
  ``i + k * 1e6`` as in VLMEvalKit's circular TSVs with ``g_index = index % 1e6``) they are
  used as is; otherwise the rotations are generated here.
* A JSON/JSONL list of rows with ``question, A.., answer, category`` and an image field
  (``image`` base64, or ``sample_image`` / ``image_path`` relative to the file) -- the layout
  of open-compass/MMBench ``samples/`` (see tests/fixtures/benchmarks).

Circular evaluation (VLMEvalKit ``mcq_circular_eval`` / ``merge_vanilla_judge``, MMBench
paper sec. 3.2): a question with N options is asked N times; rotation k moves option
``(j + k) mod N`` into slot ``j`` and relabels the answer accordingly. The question counts as
correct only if every rotation is answered correctly. Prompt per rotation: VLMEvalKit's LLaVA
MCQ prompt (Chinese suffix ``请直接回答选项字母。`` for Chinese questions). Parse: ``can_infer``.

Metrics
* ``circular_acc`` (paper-compatible, Table 1 "CCBench"): fraction of questions whose
  rotations are all correct (510 questions).
* ``vanilla_acc``: accuracy of the un-rotated copy alone; ``rotation_acc``: accuracy over all
  rotated copies; ``by_category``: circular accuracy per category.
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
    texts = [options[l] for l in letters]
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
    published = "https://opencompass.openxlab.space/utils/benchmarks/MMBench_V11/CCBench.tsv"

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["CCBench.tsv", "ccbench*.jsonl", "ccbench*.json",
                                     "CCBench*.jsonl"])
        rows = read_vlmevalkit_tsv(path) if path.suffix == ".tsv" else read_records(path)
        pre_rotated = any(r.get("g_index") is not None for r in rows) or any(
            r.get("index") is not None and int(float(r["index"])) >= 1_000_000 for r in rows)
        samples = []
        for i, r in enumerate(rows):
            opts = option_columns(r)
            image, kind = self._image(r, path)
            idx = int(float(r["index"])) if r.get("index") is not None else i
            if pre_rotated:
                g = int(float(r["g_index"])) if r.get("g_index") is not None else idx % 1_000_000
                samples.append(Sample(
                    qid=str(idx), prompt=llava_mcq_prompt(r["question"], opts, r.get("hint")),
                    gold=str(r["answer"]).strip(), image=image, image_kind=kind, choices=opts,
                    meta={"group": g, "rotation": idx // 1_000_000,
                          "category": r.get("category")}))
                continue
            for k, (rot, gold) in enumerate(rotations(opts, str(r["answer"]).strip())):
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
