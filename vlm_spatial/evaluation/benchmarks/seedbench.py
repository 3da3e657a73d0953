"""SEED-Bench-IMG: the image questions of SEED-Bench-1 (dimensions 1-9, four options each).

Files (either):
* VLMEvalKit ``SEEDBench_IMG.tsv`` (``index, image, question, A, B, C, D, answer, category``).
* SEED-Bench's own ``SEED-Bench.json`` (``{"questions": [{question_id, question, choice_a..d,
  answer, data_id, data_type, question_type_id}], "question_type": {name: id}}``) with images
  in ``SEED-Bench-image/<data_id>``; only ``data_type == "image"`` rows are kept.

Prompt: VLMEvalKit's LLaVA MCQ prompt. Parse: VLMEvalKit ``can_infer`` (exact matching).
Metric (paper-compatible, Table 1 "SEEDBench-IMG"): accuracy = mean(hit) as a fraction, plus
``by_category`` (VLMEvalKit ``report_acc``). SEED-Bench's official evaluation ranks option
likelihoods (AILab-CVC/SEED-Bench ``eval.py``); that needs ``score_options`` from the model
and is not what the paper reports, so only the generation metric is computed here.
"""
from __future__ import annotations

from .answer_parsing import llava_mcq_prompt
from .base import Sample, read_json, read_vlmevalkit_tsv, register
from .mcq import MCQBenchmark, sample_from_vlmevalkit_row


@register
class SEEDBenchIMG(MCQBenchmark):
    name = "seedbench"
    title = "SEEDBench-IMG"
    vlmevalkit_key = "SEEDBench_IMG"
    primary = "accuracy"
    paper_columns = {"SEEDBench-IMG": "accuracy"}
    subdirs = ("seedbench", "SEED-Bench", "seed_bench")
    expected_files = ("SEEDBench_IMG.tsv (VLMEvalKit)",
                      "SEED-Bench.json + SEED-Bench-image/ (AILab-CVC/SEED-Bench, HF AILab-CVC/SEED-Bench)")
    published = ("https://opencompass.openxlab.space/utils/benchmarks/SEEDBench/SEEDBench_IMG.tsv ; "
                 "https://huggingface.co/datasets/AILab-CVC/SEED-Bench")

    def load(self, data_root) -> list[Sample]:
        path = self.find(data_root, ["SEEDBench_IMG.tsv", "SEED-Bench.json"])
        if path.suffix == ".tsv":
            return [sample_from_vlmevalkit_row(r) for r in read_vlmevalkit_tsv(path)]
        data = read_json(path)
        id2type = {v: k for k, v in data.get("question_type", {}).items()}
        img_dir = path.parent / "SEED-Bench-image"
        samples = []
        for q in data["questions"]:
            if q.get("data_type", "image") != "image":
                continue
            opts = {L: str(q[f"choice_{L.lower()}"]) for L in "ABCD"}
            samples.append(Sample(
                qid=str(q["question_id"]), prompt=llava_mcq_prompt(q["question"], opts),
                gold=str(q["answer"]).strip(), image=str(img_dir / q["data_id"]),
                image_kind="path", choices=opts,
                meta={"category": id2type.get(q.get("question_type_id"), q.get("question_type_id"))}))
        return samples
