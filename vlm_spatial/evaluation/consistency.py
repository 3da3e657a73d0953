"""Spatial-consistency diagnostics on the synthetic test split: does a model's answer follow the
geometry when the scene is mirrored or transposed, and does it answer one axis with the other?

    metrics = evaluate_checkpoint_consistency(CKPT, SYNTH_DIR, OUT)     # or diagnose(records, S, predict)

Transforms (`TRANSFORMS`) of every test scene, re-drawn from its stored objects at the transformed
centres (so every shape looks as in training; for `flip_lr` this is exactly the mirrored image):
`flip_lr` (x -> S-1-x), `flip_tb` (y -> S-1-y), `transpose` (x <-> y). The question is kept, except
that under `transpose` an axis question asks about the other axis (left/right <-> above/below; a
relation_mc question's options become the other axis's words, in the same order), so that every
transform maps answers one to one (`WORD_MAPS`): `flip_lr` swaps left/right and keeps above/below,
`flip_tb` the reverse, `transpose` maps left <-> above and right <-> below; `closer` and `count`
answers never change.

Per transform and family:

* `consistency`: the fraction of questions whose answer on the transformed scene is the answer
  implied by the model's own answer on the original (mapped by the transform); an original answer
  that is not one of the question's possible answers counts as inconsistent. A perfect model
  scores 1; it does not need to be right, only geometrically coherent.
* `accuracy`: answers on the transformed scene against its implied gold answer.

`axis_confusion`, on the original scenes: for `vertical` questions (above/below, and relation_mc with
above/below options) the cross-axis reading is the answer the objects' horizontal order would give
(read as a transposition does: left -> above, right -> below; and, as `mirrored`, left -> below);
for `horizontal` questions the vertical order (above -> left, below -> right; mirrored: above ->
right). Among the questions whose cross-axis reading is clear (centres at least the generator's
margin apart) and differs from the gold answer, the rate is the fraction answered with the
cross-axis reading: 0 for a model that reads the asked axis, 1 for one that reads the other axis,
about 0.5 for one that ignores position.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

from vlm_spatial.data import synthetic
from vlm_spatial.evaluation.benchmarks import get_benchmark
from vlm_spatial.evaluation.benchmarks.answer_parsing import LETTERS
from vlm_spatial.evaluation.benchmarks.base import Sample

TRANSFORMS = ("flip_lr", "flip_tb", "transpose")
WORD_MAPS = {
    "flip_lr": {"left": "right", "right": "left"},
    "flip_tb": {"above": "below", "below": "above"},
    "transpose": {"left": "above", "above": "left", "right": "below", "below": "right"},
}
AXIS_WORDS = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
# cross-axis readings: the answer the other axis's order gives (first object before / after the second)
CROSS = {"transposed": {"horizontal": ("left", "right"), "vertical": ("above", "below")},
         "mirrored": {"horizontal": ("right", "left"), "vertical": ("below", "above")}}
_NAME = re.compile(r"\b(" + "|".join(synthetic.COLORS) + r") (" + "|".join(synthetic.SHAPES) + r")\b")
_AXIS_QUESTION = {"left_right": "Is the {a} to the left or right of the {b}?",
                  "above_below": "Is the {a} above or below the {b}?"}


def named_objects(record: dict) -> list[dict]:
    """The objects a record's question names, in the order it names them (colours are unique in a
    scene). Raises ValueError naming the record when a name matches no object."""
    by_color = {o["color"]: o for o in record["objects"]}
    out = []
    for color, shape in _NAME.findall(record["question"]):
        o = by_color.get(color)
        if o is None or o["shape"] != shape:
            raise ValueError(f"record {record.get('question_id')}: {color} {shape} is not in its objects")
        out.append(o)
    return out


def transform_objects(objects: Sequence[dict], transform: str, image_size: int) -> list[dict]:
    """The objects with their centres moved by `transform` on an `image_size` canvas."""
    S = image_size
    move = {"flip_lr": lambda o: (S - 1 - o["x"], o["y"]), "flip_tb": lambda o: (o["x"], S - 1 - o["y"]),
            "transpose": lambda o: (o["y"], o["x"])}[transform]
    return [dict(o, x=int(move(o)[0]), y=int(move(o)[1])) for o in objects]


def _axis_of(record: dict) -> str | None:
    """'horizontal' / 'vertical' for axis questions, else None."""
    fam = record["family"]
    if fam == "left_right":
        return "horizontal"
    if fam == "above_below":
        return "vertical"
    if fam == "relation_mc":
        return "horizontal" if set(record["choices"]) == set(AXIS_WORDS["horizontal"]) else "vertical"
    return None


def map_answer(record: dict, answer: str | None, transform: str, new_choices: list | None) -> str | None:
    """The answer to the transformed question implied by `answer` (parsed: a word, a colour, a
    number or an option letter) to the original `record`; None when `answer` is not one of the
    question's possible answers."""
    fam, words = record["family"], WORD_MAPS[transform]
    if answer is None:
        return None
    if fam in ("left_right", "above_below"):
        allowed = AXIS_WORDS["horizontal" if fam == "left_right" else "vertical"]
        return words.get(answer, answer) if answer in allowed else None
    if fam == "relation_mc":
        letters = {LETTERS[i]: c for i, c in enumerate(record["choices"])}
        if answer not in letters:
            return None
        return LETTERS[new_choices.index(words.get(letters[answer], letters[answer]))]
    if fam == "closer":
        candidates = [o["color"] for o in named_objects(record)[1:]]
        return answer if answer in candidates else None
    if fam == "count":
        return answer if answer.isdigit() else None
    return answer  # exists: yes / no, unchanged by any transform


def transformed_record(record: dict, transform: str, image_size: int) -> dict:
    """`record` with its scene transformed, its question asked about the transformed scene (the
    other axis under `transpose`) and its implied gold `answer`."""
    objs = transform_objects(record["objects"], transform, image_size)
    q, choices = record["question"], record.get("choices")
    if transform == "transpose":
        fam = record["family"]
        if fam in _AXIS_QUESTION:
            a, b = (synthetic.object_name(o) for o in named_objects(record))
            other = "above_below" if fam == "left_right" else "left_right"
            if q != _AXIS_QUESTION[fam].format(a=a, b=b):
                raise ValueError(f"record {record.get('question_id')}: {q!r} is not the {fam} phrasing "
                                 f"{_AXIS_QUESTION[fam]!r} of vlm_spatial.data.synthetic")
            q = _AXIS_QUESTION[other].format(a=a, b=b)
        elif fam == "relation_mc":
            choices = [WORD_MAPS["transpose"][c] for c in choices]
            head = q[: q.index("\n(A)")]
            q = head + "".join(f"\n({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    out = dict(record, objects=objs, question=q, transform=transform)
    if choices is not None:
        out["choices"] = choices
    out["answer"] = map_answer(record, _gold(record), transform, choices)
    return out


def _gold(record: dict) -> str:
    """The record's answer in parsed form (an option letter, or the normalised word / number)."""
    return get_benchmark("synthetic").parse(_sample(record, None), str(record["answer"]))


def _sample(record: dict, image) -> Sample:
    choices = record.get("choices")
    return Sample(qid=f"{record['question_id']}:{record.get('transform', 'original')}", prompt=record["question"],
                  gold=record["answer"], image=image, image_kind="array",
                  choices={LETTERS[i]: c for i, c in enumerate(choices)} if choices else None,
                  meta={"family": record["family"], "objects": record["objects"]})


def _cross_reading(record: dict, image_size: int, mapping: str) -> str | None:
    """The answer the other axis's order of the two named objects gives (`CROSS[mapping]`), as the
    record's answer form (word, or option letter); None when that order is not clear."""
    axis = _axis_of(record)
    if axis is None:
        return None
    a, b = named_objects(record)[:2]
    key = "y" if axis == "horizontal" else "x"
    d = a[key] - b[key]
    if abs(d) < synthetic.MARGIN_FRACTION * image_size:
        return None
    word = CROSS[mapping][axis][0 if d < 0 else 1]
    if record["family"] == "relation_mc":
        return LETTERS[record["choices"].index(word)]
    return word


def _rate(hits: int, n: int) -> dict:
    return {"rate": hits / n if n else None, "n": n}


def diagnose(records: Sequence[dict], image_size: int, predict: Callable[[list, int], list],
             batch_size: int = 100, max_new_tokens: int = 16) -> tuple[dict, list[dict]]:
    """Run the diagnostics (see the module docstring) of `predict(samples, max_new_tokens) -> raw
    answers` (`evaluation.runner.vlm_predictor` or any oracle; each sample's image is the scene as
    an `[S,S,3]` uint8 array, `meta` has its family and objects) on synthetic eval `records` (the
    format of `test_eval.json`) drawn on `image_size`-pixel canvases. Returns (metrics, rows): metrics
    `{'original': {'accuracy': {family: acc}}, <transform>: {'consistency': {family: rate},
    'accuracy': {family: acc}}, 'axis_confusion': {vertical|horizontal: {transposed|mirrored:
    {rate, n}}}, 'n': {family: count}}`; rows one per question and view (answer, parsed, implied)."""
    bench = get_benchmark("synthetic")
    views = {"original": [dict(r, transform="original") for r in records]}
    views.update({t: [transformed_record(r, t, image_size) for r in records] for t in TRANSFORMS})
    parsed: dict[str, list] = {}
    rows = []
    for view, recs in views.items():
        samples = [_sample(r, synthetic.render(r["objects"], image_size)) for r in recs]
        raws = []
        for i in range(0, len(samples), batch_size):
            raws += list(predict(samples[i:i + batch_size], max_new_tokens))
        parsed[view] = [bench.parse(s, raw) for s, raw in zip(samples, raws)]
        rows += [{"qid": s.qid, "view": view, "family": r["family"], "question": r["question"], "raw_output": raw,
                  "parsed": p, "gold": r["answer"] if view != "original" else _gold(r)}
                 for s, r, raw, p in zip(samples, recs, raws, parsed[view])]
    families = sorted({r["family"] for r in records})
    by_fam = {f: [i for i, r in enumerate(records) if r["family"] == f] for f in families}

    def acc(view: str, golds: list) -> dict:
        return {f: sum(parsed[view][i] == golds[i] for i in idx) / len(idx) for f, idx in by_fam.items()}

    metrics = {"n": {f: len(idx) for f, idx in by_fam.items()},
               "original": {"accuracy": acc("original", [_gold(r) for r in records])}}
    for t in TRANSFORMS:
        implied = [map_answer(r, parsed["original"][i], t, views[t][i].get("choices")) for i, r in enumerate(records)]
        metrics[t] = {
            "consistency": {f: sum(implied[i] is not None and parsed[t][i] == implied[i] for i in idx) / len(idx)
                            for f, idx in by_fam.items()},
            "accuracy": acc(t, [r["answer"] for r in views[t]]),
        }
    confusion = {}
    for axis in ("vertical", "horizontal"):
        confusion[axis] = {}
        for mapping in CROSS:
            hits = n = 0
            for i, r in enumerate(records):
                if _axis_of(r) != axis:
                    continue
                cross = _cross_reading(r, image_size, mapping)
                if cross is not None and cross != _gold(r):
                    n += 1
                    hits += parsed["original"][i] == cross
            confusion[axis][mapping] = _rate(hits, n)
    metrics["axis_confusion"] = confusion
    return metrics, rows


def evaluate_checkpoint_consistency(checkpoint: str, synthetic_dir: str, out_dir: str, *, split: str = "test",
                                    batch_size: int = 100, resize_mode: str = "resize", dtype: str | None = None,
                                    mesh=None) -> dict:
    """The diagnostics of a checkpoint (vlm_spatial checkpoint or training workdir) on the
    synthetic set in `synthetic_dir` (its `<split>_eval.json` and `info.json`), answered by greedy
    generation as the synthetic benchmark is. Writes `out_dir/metrics.json` and `out_dir/rows.jsonl`;
    returns the metrics."""
    import vlm_spatial
    from vlm_spatial.api import image_config_for
    from vlm_spatial.evaluation.runner import vlm_predictor

    path = os.path.join(synthetic_dir, f"{split}_eval.json")
    with open(path) as f:
        records = json.load(f)
    with open(os.path.join(synthetic_dir, "info.json")) as f:
        image_size = int(json.load(f)["image_size"])
    vlm = vlm_spatial.load(checkpoint, dtype=dtype, mesh=mesh)
    vlm.image_config = image_config_for(vlm.config, resize_mode)
    metrics, rows = diagnose(records, image_size, vlm_predictor(vlm), batch_size=batch_size,
                             max_new_tokens=get_benchmark("synthetic").max_new_tokens)
    metrics = {"checkpoint": os.path.abspath(checkpoint), "split": path, **metrics}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "rows.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics
