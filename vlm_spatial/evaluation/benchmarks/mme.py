"""MME: 14 yes/no subtasks (10 perception, 4 cognition), two questions per image.

Files (any one of):
* VLMEvalKit ``MME.tsv`` (``index, image, question, answer ('Yes'|'No'), category[, image_path]``).
* LLaVA's ``llava_mme.jsonl`` (``question_id = "<category>/<file>"``, ``image, text,
  category``) together with the official release ``MME_Benchmark_release_version/`` for the
  gold answers: per category either ``<cat>/questions_answers_YN/<name>.txt`` (images in
  ``<cat>/images/``) or ``<cat>/<name>.txt`` beside ``<cat>/<name>.<ext>``; each txt line is
  ``question<TAB>answer``.

Prompt (paper-compatible, VLMEvalKit ``ImageYORNDataset``; LLaVA adds nothing for Y/N): the
MME question as released, ending in ``" Please answer yes or no."``. LLaVA's own eval replaced
that by ``"\\nAnswer the question using a single word or phrase."``; questions read from
``llava_mme.jsonl`` are mapped back unless ``prompt_style='llava'``.
Parse: VLMEvalKit ``YOrN_Extraction`` ('Yes' iff the word yes occurs and no does not, and
vice versa; otherwise Unknown -> wrong). ``correct = (extracted == answer)``.

Metrics (VLMEvalKit ``yorn.py::MME_rating``; the same formula as MME's ``eval_tool/calculation.py``):
* per subtask: ``acc = 100 * mean(correct)`` over questions, ``acc_plus = 100 * mean over images
  of (both questions correct)``, ``score = acc + acc_plus`` (max 200).
* ``perception`` = sum of the 10 perception scores (max 2000), ``cognition`` = sum of the 4
  cognition scores (VLMEvalKit calls it 'reasoning'; max 800).
* ``fraction`` (paper-compatible, Table 1 "MME") = (perception + cognition) / 2800.

Official (``official_*``): the same numbers with MME's own parse instead of ``YOrN_Extraction``
(`mme_official_parse`, ``calculation.py::parse_pred_ans``): the lower-cased answer is yes if
``"yes"`` occurs in its first 4 characters, else no if ``"no"`` does, else "other" (wrong) --
so "The answer is no" is other, "Yes, and no" yes, "Not sure" no. ``official_subtasks`` also
counts each subtask's "other" answers (``other_num``). calculation.py reads one
``image<TAB>question<TAB>gold<TAB>answer`` line per question (LLaVA's
``convert_answer_to_mme.py`` writes the answer as is), so an answer holding a tab or a newline
cannot be scored by it; here the rule is applied to the answer as it is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from .answer_parsing import VQA_SHORT_SUFFIX, yorn_extraction
from .base import (Benchmark, Sample, count_unparsed, dedupe_qids, read_jsonl,
                   read_vlmevalkit_tsv, register)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")
MME_SUFFIX = " Please answer yes or no."


def mme_scores(records: list[dict]) -> dict:
    """acc / acc+ / score per subtask, perception & cognition sums and the /2800 fraction."""
    stats: dict = {}
    for r in records:
        stats.setdefault(r["meta"]["category"], {}).setdefault(r["meta"]["image_key"], []).append(
            1.0 if r["correct"] else 0.0)
    per = {}
    for cat, images in stats.items():
        flat = [v for vals in images.values() for v in vals]
        acc = 100 * float(np.mean(flat))
        acc_plus = 100 * float(np.mean([float(all(vals)) if len(vals) == 2 else 0.0
                                        for vals in images.values()]))
        per[cat] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(per[c]["score"] for c in PERCEPTION if c in per)
    cognition = sum(per[c]["score"] for c in COGNITION if c in per)
    return {"fraction": (perception + cognition) / 2800, "perception": perception,
            "cognition": cognition, "total": perception + cognition, "subtasks": per,
            "missing_subtasks": [c for c in PERCEPTION + COGNITION if c not in per]}


def mme_official_parse(output) -> Optional[str]:
    """MME ``calculation.py`` ``parse_pred_ans``: 'Yes' / 'No' from the first 4 characters of the
    lower-cased answer (yes before no), None for its 'other'."""
    if output is None:
        return None
    head = str(output).lower()[:4]
    if "yes" in head:
        return "Yes"
    if "no" in head:
        return "No"
    return None


@register
class MME(Benchmark):
    name = "mme"
    title = "MME"
    vlmevalkit_key = "MME"
    primary = "fraction"
    paper_columns = {"MME": "fraction"}
    subdirs = ("mme", "MME")
    expected_files = ("MME.tsv (VLMEvalKit)",
                      "llava_mme.jsonl + MME_Benchmark_release_version/ (LLaVA eval + MME release)")
    published = ("https://opencompass.openxlab.space/utils/VLMEval/MME.tsv ; "
                 "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation")

    def load(self, data_root) -> list[Sample]:
        tsv = self.find(data_root, ["MME.tsv"], required=False)
        if tsv is not None:
            samples = []
            for r in read_vlmevalkit_tsv(tsv):
                key = r.get("image_path") or hashlib.sha1(str(r.get("image")).encode()).hexdigest()
                samples.append(Sample(
                    qid=str(r["index"]), prompt=str(r["question"]), gold=str(r["answer"]).strip(),
                    image=r.get("image"), image_kind="base64",
                    meta={"category": r["category"], "image_key": key}))
            return samples
        qfile = self.find(data_root, ["llava_mme.jsonl"])
        release = self.find(data_root, ["MME_Benchmark_release_version", "MME_Benchmark"])
        gold = self._release_answers(release)
        samples = []
        for r in read_jsonl(qfile):
            text = r["text"]
            if self.options.get("prompt_style") != "llava":
                text = text.replace(VQA_SHORT_SUFFIX, MME_SUFFIX)
            cat, file = r["question_id"].split("/", 1)
            qtext = r["text"].replace(VQA_SHORT_SUFFIX, "").strip()
            answer = gold.get((cat, Path(file).stem, qtext))
            samples.append(Sample(
                qid=r["question_id"], prompt=text, gold=answer,
                image=str(self._image_path(release, r["image"])), image_kind="path",
                meta={"category": cat, "image_key": r["image"]}))
        missing = [s.qid for s in samples if s.gold is None]
        if missing:
            raise ValueError(f"MME: no gold answer in {release} for {len(missing)} questions, "
                             f"e.g. {missing[:3]}")
        return dedupe_qids(samples)

    @staticmethod
    def _image_path(release: Path, rel: str) -> Path:
        cat, file = rel.split("/", 1)
        for cand in (release / rel, release / cat / "images" / Path(file).name):
            if cand.exists():
                return cand
        return release / rel

    @staticmethod
    def _release_answers(release: Path) -> dict:
        """{(category, image file stem, question without suffix): 'Yes'|'No'} from the txt files.

        The release keeps one ``question<TAB>answer`` line per question in
        ``<category>/questions_answers_YN/<stem>.txt`` or ``<category>/<stem>.txt``.
        """
        out = {}
        for txt in release.rglob("*.txt"):
            rel = txt.relative_to(release).parts
            if txt.parent.name == "questions_answers_YN" or len(rel) == 2:
                for line in txt.read_text(encoding="utf-8").splitlines():
                    if "\t" not in line:
                        continue
                    q, a = line.rsplit("\t", 1)
                    out[(rel[0], txt.stem, q.replace(MME_SUFFIX, "").strip())] = a.strip()
        return out

    def parse(self, sample: Sample, raw: str):
        return yorn_extraction(raw)

    def metrics(self, records: list[dict]) -> dict:
        out = mme_scores(records)
        out.update({"n": len(records), "n_unparsed": count_unparsed(records),
                    "accuracy": float(np.mean([bool(r["correct"]) for r in records]))})
        official = []
        for r in records:
            parsed = mme_official_parse(r.get("raw_output"))
            official.append(dict(r, parsed=parsed, correct=parsed is not None and parsed == r["gold"]))
        scores = mme_scores(official)
        for cat, sub in scores["subtasks"].items():
            sub["other"] = sum(1 for r in official if r["meta"]["category"] == cat and r["parsed"] is None)
        out.update({f"official_{k}": scores[k] for k in ("fraction", "perception", "cognition", "total",
                                                          "subtasks")})
        out["official_n_other"] = count_unparsed(official)
        return out
