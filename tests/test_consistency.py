"""evaluation/consistency.py with oracle answer functions: a perfect oracle (answers from the scene's
coordinates) is right and consistent everywhere; one that always says "left" scores values worked
out by hand on a hand-built set."""
import json
import re

import numpy as np
import pytest

from vlm_spatial.data import synthetic
from vlm_spatial.evaluation import consistency
from vlm_spatial.evaluation.consistency import TRANSFORMS, diagnose

S = 32
NAME = re.compile(r"(\w+) (square|circle|triangle)")


def geometric_oracle(samples, max_new_tokens):
    """The right answer of each question, worked out from the objects of the scene it is shown."""
    out = []
    for s in samples:
        objs = {o["color"]: o for o in s.meta["objects"]}
        named = [objs[c] for c, _ in NAME.findall(s.prompt) if c in objs]
        if "How many" in s.prompt:
            shape = re.search(r"How many (\w+)s", s.prompt).group(1)
            out.append(str(sum(o["shape"] == shape for o in s.meta["objects"])))
        elif "closer" in s.prompt:
            a, b, c = named
            dist = lambda o: np.hypot(o["x"] - a["x"], o["y"] - a["y"])  # noqa: E731
            out.append(b["color"] if dist(b) < dist(c) else c["color"])
        else:
            a, b = named[:2]
            horizontal = "left or right" in s.prompt or (s.choices and "left" in s.choices.values())
            word = (("left" if a["x"] < b["x"] else "right") if horizontal
                    else ("above" if a["y"] < b["y"] else "below"))
            out.append(next(k for k, v in s.choices.items() if v == word) if s.choices else word)
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.generate(str(out), num_train=4, num_val=0, num_test=80, seed=3, image_size=S)
    return json.loads((out / "test_eval.json").read_text())


def test_mirrored_scene_is_the_mirrored_image(records):
    for r in records[:10]:
        img = synthetic.render(r["objects"], S)
        assert np.array_equal(synthetic.render(consistency.transform_objects(r["objects"], "flip_lr", S), S),
                              img[:, ::-1])
        moved = consistency.transform_objects(r["objects"], "transpose", S)
        assert [(o["x"], o["y"]) for o in moved] == [(o["y"], o["x"]) for o in r["objects"]]


def test_perfect_oracle_scores_one(records):
    metrics, rows = diagnose(records, S, geometric_oracle, batch_size=17)
    fams = set(synthetic.DEFAULT_FAMILIES)
    assert set(metrics["n"]) == fams and sum(metrics["n"].values()) == len(records)
    assert metrics["original"]["accuracy"] == {f: 1.0 for f in fams}
    for t in TRANSFORMS:  # the implied golds are the geometry of the transformed scene
        assert metrics[t] == {"consistency": {f: 1.0 for f in fams}, "accuracy": {f: 1.0 for f in fams}}, t
    for axis in ("vertical", "horizontal"):
        for mapping in ("transposed", "mirrored"):
            got = metrics["axis_confusion"][axis][mapping]
            assert got["rate"] == 0.0 and got["n"] > 0, (axis, mapping, got)
    assert len(rows) == 4 * len(records)
    # transposition asks the other axis
    t = consistency.transformed_record(next(r for r in records if r["family"] == "left_right"), "transpose", S)
    assert "above or below" in t["question"] and t["answer"] in ("above", "below")


def _rec(qid, family, question, answer, objects, choices=None):
    r = {"question_id": qid, "image": "", "family": family, "question": question, "answer": answer,
         "objects": [dict(o, r=3) for o in objects]}
    return dict(r, choices=choices) if choices else r


def _o(color, shape, x, y):
    return {"color": color, "shape": shape, "x": x, "y": y}


HAND = [  # S = 32, margin 6.4 pixels
    _rec("r1", "left_right", "Is the red square to the left or right of the blue circle?", "left",
         [_o("red", "square", 5, 5), _o("blue", "circle", 25, 25)]),
    _rec("r2", "left_right", "Is the red square to the left or right of the blue circle?", "right",
         [_o("red", "square", 25, 5), _o("blue", "circle", 5, 25)]),
    _rec("r3", "above_below", "Is the red square above or below the blue circle?", "above",
         [_o("red", "square", 5, 5), _o("blue", "circle", 25, 25)]),
    _rec("r4", "relation_mc", "Considering the relative positions of the red square and the blue circle in the "
         "image, where is the red square located with respect to the blue circle? Select from the following "
         "choices.\n(A) left\n(B) right", "A", [_o("red", "square", 5, 16), _o("blue", "circle", 25, 16)],
         ["left", "right"]),
    _rec("r5", "relation_mc", "Considering the relative positions of the red square and the blue circle in the "
         "image, where is the red square located with respect to the blue circle? Select from the following "
         "choices.\n(A) below\n(B) above", "B", [_o("red", "square", 16, 5), _o("blue", "circle", 16, 25)],
         ["below", "above"]),
    _rec("r6", "count", "How many squares are there?", "2",
         [_o("red", "square", 5, 5), _o("blue", "square", 25, 25), _o("green", "circle", 5, 25)]),
    _rec("r7", "closer", "Which is closer to the red square, the blue circle or the green triangle?", "blue",
         [_o("red", "square", 5, 5), _o("blue", "circle", 12, 12), _o("green", "triangle", 27, 27)]),
]


def test_always_left_scores_the_hand_computed_values():
    metrics, _ = diagnose(HAND, S, lambda samples, n: ["left"] * len(samples))
    # r1 right, r2 wrong; "left" is option A of r4 (right) and no option of r5
    assert metrics["original"]["accuracy"] == {"left_right": 0.5, "above_below": 0.0, "relation_mc": 0.5,
                                               "count": 0.0, "closer": 0.0}
    # left/right: a mirror must turn "left" into "right" (0), an up-down flip keeps it (1), the
    # transposed question asks above/below ("left" is no answer: 0). "left" is no answer to r3, r5-r7.
    # r4: the same as left/right; r5: no answer, inconsistent under every transform
    assert metrics["flip_lr"]["consistency"] == {"left_right": 0.0, "above_below": 0.0, "relation_mc": 0.0,
                                                 "count": 0.0, "closer": 0.0}
    assert metrics["flip_tb"]["consistency"] == {"left_right": 1.0, "above_below": 0.0, "relation_mc": 0.5,
                                                 "count": 0.0, "closer": 0.0}
    assert metrics["transpose"]["consistency"] == {f: 0.0 for f in metrics["n"]}
    # horizontal questions: r2's vertical order reads "left" (above -> left) against its gold "right",
    # and "left" is what it answers; read mirrored (above -> right) r1 conflicts and is not answered so;
    # r4's objects share a row. Vertical questions: r3 conflicts only mirrored ("below"), r5 never.
    assert metrics["axis_confusion"] == {
        "horizontal": {"transposed": {"rate": 1.0, "n": 1}, "mirrored": {"rate": 0.0, "n": 1}},
        "vertical": {"transposed": {"rate": None, "n": 0}, "mirrored": {"rate": 0.0, "n": 1}}}


def test_a_model_reading_the_other_axis_is_caught():
    """Answers every axis question by the other axis's order (as a transposition maps them)."""
    def swapped(samples, n):
        out = []
        for s in samples:
            a, b = [o for c, _ in NAME.findall(s.prompt) for o in s.meta["objects"] if o["color"] == c][:2]
            vertical = "above" in s.prompt.split("?")[0] or (s.choices and "above" in s.choices.values())
            word = ("above" if a["x"] < b["x"] else "below") if vertical else ("left" if a["y"] < b["y"] else "right")
            out.append(next(k for k, v in s.choices.items() if v == word) if s.choices else word)
        return out

    recs = [r for r in HAND if r["family"] in ("left_right", "above_below")]
    metrics, _ = diagnose(recs, S, swapped)
    assert metrics["axis_confusion"]["horizontal"]["transposed"] == {"rate": 1.0, "n": 1}
    assert metrics["flip_lr"]["consistency"]["above_below"] == 0.0  # a mirror changes its vertical answers


def test_a_question_naming_a_missing_object_is_named():
    bad = dict(HAND[0], question="Is the purple square to the left or right of the blue circle?")
    with pytest.raises(ValueError, match="r1: purple square"):
        diagnose([bad], S, geometric_oracle)


def test_evaluate_cli_runs_the_diagnostics_on_a_checkpoint(tmp_path, capsys):
    """`python -m vlm_spatial.evaluate --consistency`: the original view is answered exactly as the
    benchmark run answers its stored images (the scenes are re-drawn from their objects)."""
    from flax import nnx

    from vlm_spatial import checkpoint
    from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer
    from vlm_spatial.evaluate import main
    from vlm_spatial.evaluation import runner
    from vlm_spatial.models import presets
    from vlm_spatial.models.vlm import VLM

    root = tmp_path / "synth"
    synthetic.generate(str(root), num_train=4, num_val=0, num_test=10, seed=1)
    tok = load_tokenizer(str(root / "tokenizer"))
    cfg = presets.vlm_config("tiny-clip", "tiny-llama", vocab_size=len(tok),
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_MARKER))
    ckpt = tmp_path / "ckpt"
    checkpoint.write_model(str(ckpt), cfg, nnx.to_pure_dict(nnx.state(VLM(cfg, rngs=nnx.Rngs(0)))), tok)
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(ckpt), "--benchmarks", "synthetic", "--data_root", str(root),
                 "--out", str(out), "--consistency", "--batch_size", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "synthetic" / "consistency" / "metrics.json").read_text())
    assert printed["synthetic"]["consistency"] == metrics
    assert set(metrics) >= {"original", *TRANSFORMS, "axis_confusion", "n"} and sum(metrics["n"].values()) == 10
    rows = [json.loads(line) for line in (out / "synthetic" / "consistency" / "rows.jsonl").read_text().splitlines()]
    preds = {r["qid"]: r["raw_output"] for r in runner.read_jsonl(out / "synthetic" / "predictions.jsonl")}
    original = {r["qid"].split(":")[0]: r["raw_output"] for r in rows if r["view"] == "original"}
    assert original == preds
    assert main(["--checkpoint", str(ckpt), "--benchmarks", "mmvp", "--data_root", str(root),
                 "--out", str(out), "--consistency"]) == 2
