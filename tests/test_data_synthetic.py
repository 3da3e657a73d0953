"""The synthetic spatial set: determinism, answers re-derived from the pixels, disjoint splits,
CLI, and the tokenizer directory it writes."""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from vlm_spatial.data import synthetic
from vlm_spatial.data.templates import ConversationEncoder

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "white": (245, 245, 245), "purple": (170, 60, 220)}
NAME = re.compile(r"(red|green|blue|yellow|white|purple) (square|circle|triangle)")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(d, num_train=60, num_val=20, num_test=20, seed=3, questions_per_image=3)
    return d


def _load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def objects_from_pixels(path):
    """{colour: (shape, x, y)} found in the image: bounding-box centre, shape from the fill ratio."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    found = {}
    for colour, rgb in COLOURS.items():
        ys, xs = np.nonzero((img == rgb).all(-1))
        if len(xs) == 0:
            continue
        fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        shape = "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"
        found[colour] = (shape, (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
    return found


def answer_from_pixels(question, objs):
    """The answer a reader of the image gives, from the question text alone."""
    names = [(c, s) for c, s in NAME.findall(question)]
    for c, s in names:
        assert objs[c][0] == s, (question, objs)
    pos = {c: np.array(objs[c][1:]) for c in objs}
    if question.startswith("How many"):
        shape = re.match(r"How many (\w+)s are there\?", question).group(1)
        return str(sum(o[0] == shape for o in objs.values()))
    if "to the left or right of" in question:
        return "left" if pos[names[0][0]][0] < pos[names[1][0]][0] else "right"
    if "above or below" in question:
        return "above" if pos[names[0][0]][1] < pos[names[1][0]][1] else "below"
    if question.startswith("Which is closer"):
        a, b, c = (n[0] for n in names)
        return b if np.linalg.norm(pos[a] - pos[b]) < np.linalg.norm(pos[a] - pos[c]) else c
    if "located with respect to" in question:
        a, b = names[0][0], names[1][0]
        choices = re.findall(r"\(([AB])\) (\w+)", question)
        axis = 0 if {w for _, w in choices} == {"left", "right"} else 1
        word = ("left", "above")[axis] if pos[a][axis] < pos[b][axis] else ("right", "below")[axis]
        return next(letter for letter, w in choices if w == word)
    raise AssertionError(f"unknown question {question!r}")


def test_answers_match_the_pixels(synth):
    n_turns = Counter()
    for split in ("train", "val", "test"):
        for rec in _load(synth, f"{split}.json"):
            objs = objects_from_pixels(os.path.join(synth, rec["image"]))
            convs = rec["conversations"]
            for q, a in zip(convs[::2], convs[1::2]):
                assert q["from"] == "human" and a["from"] == "gpt"
                assert a["value"] == answer_from_pixels(q["value"].replace("<image>\n", ""), objs), rec["id"]
                n_turns[split] += 1
            assert convs[0]["value"].startswith("<image>\n") and "<image>" not in "".join(t["value"] for t in convs[1:])
        if split != "train":
            for ev in _load(synth, f"{split}_eval.json"):
                objs = objects_from_pixels(os.path.join(synth, ev["image"]))
                assert ev["answer"] == answer_from_pixels(ev["question"], objs)
                assert {o["color"]: (o["shape"], o["x"], o["y"]) for o in ev["objects"]} == objs
    assert n_turns["val"] == n_turns["test"] == 20 and n_turns["train"] > 120  # up to 3 turns each
    for rec in _load(synth, "pretrain.json"):  # stage-1 captions name every object once
        objs = objects_from_pixels(os.path.join(synth, rec["image"]))
        assert sorted(NAME.findall(rec["conversations"][1]["value"])) == sorted((c, o[0]) for c, o in objs.items())


def test_primary_answers_are_balanced(synth):
    answers = {}
    for split in ("train", "val", "test"):
        for rec in _load(synth, f"{split}.json"):
            answers.setdefault(rec["families"][0], []).append(rec["conversations"][1]["value"])
    assert set(answers) == set(synthetic.DEFAULT_FAMILIES)
    for family in ("left_right", "above_below", "count", "relation_mc"):
        counts = Counter(answers[family])
        assert len(counts) == (3 if family == "count" else 2) and max(counts.values()) - min(counts.values()) <= 1


def _image_hashes(d, split):
    return [hashlib.sha1(np.asarray(Image.open(os.path.join(d, r["image"]))).tobytes()).hexdigest()
            for r in _load(d, f"{split}.json")]


def test_splits_share_no_image(synth):
    hashes = {s: _image_hashes(synth, s) for s in ("train", "val", "test")}
    for s, h in hashes.items():
        assert len(set(h)) == len(h), s
    assert not set(hashes["train"]) & set(hashes["val"])
    assert not set(hashes["train"]) & set(hashes["test"])
    assert not set(hashes["val"]) & set(hashes["test"])


def _tree(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), d)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def test_cli_is_deterministic_and_its_tokenizer_loads_offline(tmp_path):
    args = ["--num_train", "12", "--num_val", "3", "--num_test", "3", "--questions_per_image", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "vlm_spatial.data.synthetic", "--out", str(tmp_path / name),
                        "--seed", "5", *args], check=True, env=env, capture_output=True)
    synthetic.main(["--out", str(tmp_path / "c"), "--seed", "6", *args])
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 3 + 3 + 12 + 3 + 2 + 1 + 3  # jsons, images, tokenizer files (+info)
    assert a["train.json"] != c["train.json"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "a" / "tokenizer"), local_files_only=True)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    enc = ConversationEncoder(str(tmp_path / "a" / "tokenizer"), "vicuna_v1", None, 4, len(tok))
    for split in ("train", "val", "test"):
        for rec in _load(tmp_path / "a", f"{split}.json"):
            assert tok.unk_token_id not in enc.encode(rec, has_image=True)["input_ids"]  # vocabulary covers the set
