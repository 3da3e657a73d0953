"""A procedurally generated spatial-reasoning set, written in the LLaVA JSON format.

Images: ``image_size`` x ``image_size`` (default 32) PNGs of a few large, distinctly coloured
shapes (square / circle / triangle; 6 colours, never two objects of one colour in a scene) on a dark
background. Every question has one fixed phrasing per family and a one-word answer:

=============  ===========================================================  ========================
family         question (``A``, ``B``, ``C`` are "<colour> <shape>")          answers
=============  ===========================================================  ========================
left_right     Is the A to the left or right of the B?                      left / right
above_below    Is the A above or below the B?                               above / below
closer         Which is closer to the A, the B or the C?                    colour of B or C
count          How many <shape>s are there?                                 1-3 (0-4 in extra turns)
relation_mc    CV-Bench-2D relation style, options (A)/(B)                  A / B
exists         Is there a <colour> <shape>?  (optional family)              yes / no
=============  ===========================================================  ========================

Answers are balanced by construction (the wanted answer is drawn first, then the scene/names are
arranged to give it), spatial questions need a clear margin (``>= 0.2 * image_size`` between
centres on the asked axis; for ``closer`` between the two distances), and every answer is derived
from the stored object coordinates (the eval file keeps them, tests re-derive the answers from the
pixels). Splits share no image (a hash of every image is kept across splits). Deterministic from
``seed``; thousands of images per second.

``generate(out_dir, ...)`` writes::

    out_dir/train.json val.json test.json        LLaVA records (vicuna_v1 / plain templates)
    out_dir/pretrain.json                        caption records on the train images (stage 1)
    out_dir/val_eval.json test_eval.json         [{question_id, image, question, answer, family,
                                                   choices (relation_mc), objects}]
    out_dir/images/{train,val,test}/NNNNNN.png
    out_dir/tokenizer/                           word-level HF tokenizer (<image>, <s>, </s>, <pad>,
                                                  <unk>), trained on the set's text
    out_dir/info.json                            arguments, counts, vocab size

CLI: ``python -m vlm_spatial.data.synthetic --out DIR --num_train N --num_val N --num_test N
--seed S --image_size 32 [--families left_right,count] [--questions_per_image 2] [--tfds]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_spatial.data.templates import IMAGE_MARKER, VICUNA_SYSTEM

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "white": (245, 245, 245), "purple": (170, 60, 220)}
BACKGROUND = (30, 30, 30)
SHAPES = ("square", "circle", "triangle")
FAMILIES = ("left_right", "above_below", "closer", "count", "relation_mc", "exists")
DEFAULT_FAMILIES = ("left_right", "above_below", "closer", "count", "relation_mc")
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_MARKER]
MC_PROMPT = "Select from the following choices."
MARGIN_FRACTION = 0.2  # spatial answers need centres this fraction of the canvas apart on the asked axis


def object_name(o: dict) -> str:
    """How questions name an object: '<colour> <shape>'."""
    return f"{o['color']} {o['shape']}"


# ----------------------------------------------------------------------------------- rendering
def render(objects: Sequence[dict], image_size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]`` image of the objects (``{"color", "shape", "x", "y", "r"}``, pixels)."""
    S = image_size
    img = np.empty((S, S, 3), np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:S, 0:S]
    for o in objects:
        cx, cy, r = o["x"], o["y"], o["r"]
        if o["shape"] == "square":
            m = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        elif o["shape"] == "circle":
            m = (xx - cx) ** 2 + (yy - cy) ** 2 <= (r + 0.5) ** 2
        else:  # triangle, apex up
            top = cy - r
            m = (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2.0 + 0.5)
        img[m] = COLORS[o["color"]]
    return img


# ----------------------------------------------------------------------------------- scenes
class _Gen:
    def __init__(self, image_size: int, rng: np.random.Generator):
        self.S = image_size
        self.r = max(2, int(round(image_size * 0.12)))
        self.margin = MARGIN_FRACTION * image_size
        self.rng = rng
        self.want: int | None = None  # forced answer slot for the primary question (balance)
        self._turn: dict[str, int] = {}

    def _pick(self, n: int) -> int:
        """The forced slot if one is set (primary questions cycle through them), else random."""
        if self.want is not None:
            return self.want % n
        return int(self.rng.integers(n))

    def scene(self, n: int, shapes: Sequence[str] | None = None) -> list[dict] | None:
        """n objects with distinct colours, non-overlapping; ``shapes`` fixes their shapes."""
        rng, r, S = self.rng, self.r, self.S
        colors = rng.permutation(list(COLORS))[:n]
        objs = []
        for i in range(n):
            for _ in range(50):
                x, y = (int(v) for v in rng.integers(r, S - r, size=2))
                if all(max(abs(x - o["x"]), abs(y - o["y"])) >= 2 * r + 2 for o in objs):
                    break
            else:
                return None
            shape = shapes[i] if shapes is not None else SHAPES[int(rng.integers(len(SHAPES)))]
            objs.append({"color": str(colors[i]), "shape": shape, "x": x, "y": y, "r": r})
        return objs

    # Each ask_* returns (question, answer, choices|None) or None when the scene cannot support it.
    def ask_axis(self, objs, axis: str):
        key = "x" if axis == "h" else "y"
        pairs = [(a, b) for a in objs for b in objs if a is not b and a[key] - b[key] >= self.margin]
        if not pairs:
            return None
        lo, hi = pairs[int(self.rng.integers(len(pairs)))]  # lo[key] > hi[key]
        want_first = self._pick(2) == 0  # answer "left"/"above" (a has the smaller coordinate)
        a, b = (hi, lo) if want_first else (lo, hi)
        words = ("left", "right") if axis == "h" else ("above", "below")
        return a, b, words[0] if want_first else words[1], words

    def ask(self, family: str, objs: list[dict]):
        rng = self.rng
        if family in ("left_right", "above_below"):
            got = self.ask_axis(objs, "h" if family == "left_right" else "v")
            if got is None:
                return None
            a, b, ans, _ = got
            q = (f"Is the {object_name(a)} to the left or right of the {object_name(b)}?" if family == "left_right"
                 else f"Is the {object_name(a)} above or below the {object_name(b)}?")
            return q, ans, None
        if family == "relation_mc":
            axis = "h" if rng.integers(2) else "v"
            got = self.ask_axis(objs, axis) or self.ask_axis(objs, "v" if axis == "h" else "h")
            if got is None:
                return None
            a, b, ans, words = got
            choices = list(words) if (self._pick(4) // 2 == 0) else list(words[::-1])
            q = (f"Considering the relative positions of the {object_name(a)} and the {object_name(b)} in the image, "
                 f"where is the {object_name(a)} located with respect to the {object_name(b)}? {MC_PROMPT}\n"
                 f"(A) {choices[0]}\n(B) {choices[1]}")
            return q, "AB"[choices.index(ans)], choices
        if family == "closer":
            triples = []
            for a in objs:
                for b in objs:
                    for c in objs:
                        if len({id(a), id(b), id(c)}) == 3 and id(b) < id(c):
                            db = np.hypot(a["x"] - b["x"], a["y"] - b["y"])
                            dc = np.hypot(a["x"] - c["x"], a["y"] - c["y"])
                            if abs(db - dc) >= self.margin:
                                triples.append((a, b, c) if db < dc else (a, c, b))
            if not triples:
                return None
            a, near, far = triples[int(rng.integers(len(triples)))]
            b, c = (near, far) if self._pick(2) == 0 else (far, near)
            return f"Which is closer to the {object_name(a)}, the {object_name(b)} or the {object_name(c)}?", near["color"], None
        if family == "count":
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            n = sum(o["shape"] == shape for o in objs)
            return f"How many {shape}s are there?", str(n), None
        if family == "exists":
            if self._pick(2) == 0:
                o = objs[int(rng.integers(len(objs)))]
                return f"Is there a {object_name(o)}?", "yes", None
            present = {(o["color"], o["shape"]) for o in objs}
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            c, s = absent[int(rng.integers(len(absent)))]
            return f"Is there a {c} {s}?", "no", None
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")

    def primary(self, family: str):
        """A scene plus a balanced question of ``family`` about it."""
        rng = self.rng
        turn = self._turn[family] = self._turn.get(family, -1) + 1
        while True:
            if family == "count":
                k = 1 + turn % 3
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                others = [s for s in SHAPES if s != shape]
                extra = int(rng.integers(0, 5 - k)) if k < 4 else 0
                shapes = [shape] * k + [others[int(rng.integers(2))] for _ in range(extra)]
                shapes = [shapes[i] for i in rng.permutation(len(shapes))]
                objs = self.scene(len(shapes), shapes)
                if objs is None:
                    continue
                return objs, (f"How many {shape}s are there?", str(k), None)
            n = int(rng.integers(3, 5)) if family == "closer" else int(rng.integers(2, 4))
            objs = self.scene(n)
            if objs is None:
                continue
            self.want = turn
            qa = self.ask(family, objs)
            self.want = None
            if qa is not None:
                return objs, qa


def caption(objs: Sequence[dict], image_size: int) -> str:
    """Stage-1 caption: objects left to right with coarse positions."""
    def third(v):
        return int(min(2, v * 3 // image_size))

    parts = []
    for o in sorted(objs, key=lambda o: (o["x"], o["y"])):
        parts.append(f"{object_name(o)} {('top', 'middle', 'bottom')[third(o['y'])]} "
                     f"{('left', 'center', 'right')[third(o['x'])]}")
        parts[-1] += " ."
    return " ".join(parts)


# ----------------------------------------------------------------------------------- tokenizer
def coverage_text() -> list[str]:
    """Text that puts every word the generator can emit into the vocabulary."""
    lines = [VICUNA_SYSTEM, "USER: ASSISTANT: " + MC_PROMPT, "( A ) ( B ) ( C ) ( D )",
             "left right above below yes no top middle bottom center . , ? Describe the image",
             " ".join(str(i) for i in range(10))]
    for c in COLORS:
        for s in SHAPES:
            lines.append(f"Is the {c} {s} to the left or right of the {c} {s}? Is the {c} {s} above or "
                         f"below the {c} {s}? Which is closer to the {c} {s}, the {c} {s} or the {c} {s}? "
                         f"How many {s}s are there? Is there a {c} {s}? Considering the relative "
                         f"positions of the {c} {s} and the {c} {s} in the image, where is the {c} {s} "
                         f"located with respect to the {c} {s}?")
    return lines


def train_tokenizer(texts: Sequence[str], out_dir: str) -> int:
    """Trains a word-level tokenizer on ``texts`` and saves it as a HF tokenizer dir; returns vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>", pad_token="<pad>",
                                 additional_special_tokens=[IMAGE_MARKER])
    hf.save_pretrained(out_dir)
    return tok.get_vocab_size()


# ----------------------------------------------------------------------------------- writer
def _turns(question: str, answer: str, first: bool) -> list[dict]:
    q = f"{IMAGE_MARKER}\n{question}" if first else question
    return [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]


def generate(out_dir: str, num_train: int = 4000, num_val: int = 500, num_test: int = 500,
             seed: int = 0, image_size: int = 32, families: Sequence[str] = DEFAULT_FAMILIES,
             questions_per_image: int = 1, write_tfds: bool = False) -> dict[str, str]:
    """Writes the synthetic set (see the module docstring) and returns its paths.

    Args:
      out_dir: output directory (created).
      num_train / num_val / num_test: images per split (one record per image).
      seed: everything is a deterministic function of it.
      image_size: canvas side in pixels.
      families: question families to draw from (uniformly, cycling so they are balanced).
      questions_per_image: train records get this many turns (extra turns ask other families
        about the same scene where it supports them); val/test always ask one question.
      write_tfds: also write the TFDS ArrayRecord version (``out_dir/tfds``; needs
        tensorflow-datasets, see ``vlm_spatial.data.tfds_synthetic``).

    Returns ``{"train", "val", "test", "pretrain", "val_eval", "test_eval", "tokenizer", "images",
    "info"[, "tfds"]}`` -> paths.
    """
    families = tuple(families)
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown family {f!r}; one of {FAMILIES}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    gen = _Gen(image_size, rng)
    seen: set[bytes] = set()
    paths = {}
    texts = coverage_text()
    pretrain = []
    for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
        img_dir = os.path.join(out_dir, "images", split)
        os.makedirs(img_dir, exist_ok=True)
        records, evals = [], []
        order = [families[i % len(families)] for i in range(n)]
        order = [order[i] for i in rng.permutation(n)]
        for i, fam in enumerate(order):
            while True:
                objs, (q, a, choices) = gen.primary(fam)
                img = render(objs, image_size)
                h = hashlib.sha1(img.tobytes()).digest()
                if h not in seen:
                    seen.add(h)
                    break
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(img).save(os.path.join(out_dir, rel), compress_level=1)
            rid = f"{split}_{i:06d}"
            convs = _turns(q, a, True)
            fams = [fam]
            if split == "train" and questions_per_image > 1:
                others = [f for f in families if f != fam]
                for f in [others[j] for j in rng.permutation(len(others))]:
                    if len(fams) >= questions_per_image:
                        break
                    qa = gen.ask(f, objs)
                    if qa is not None:
                        convs += _turns(qa[0], qa[1], False)
                        fams.append(f)
            records.append({"id": rid, "image": rel, "conversations": convs, "families": fams})
            texts.extend(t["value"].replace(IMAGE_MARKER, "") for t in convs)
            if split != "train":
                ev = {"question_id": rid, "image": rel, "question": q, "answer": a, "family": fam,
                      "objects": objs}
                if choices is not None:
                    ev["choices"] = choices
                evals.append(ev)
            else:
                pretrain.append({"id": f"cap_{i:06d}", "image": rel, "conversations": [
                    {"from": "human", "value": f"{IMAGE_MARKER}\nDescribe the image."},
                    {"from": "gpt", "value": caption(objs, image_size)}]})
        paths[split] = os.path.join(out_dir, f"{split}.json")
        with open(paths[split], "w") as f:
            json.dump(records, f, indent=0)
        if split != "train":
            paths[f"{split}_eval"] = os.path.join(out_dir, f"{split}_eval.json")
            with open(paths[f"{split}_eval"], "w") as f:
                json.dump(evals, f, indent=0)
    texts.extend(r["conversations"][1]["value"] for r in pretrain)
    paths["pretrain"] = os.path.join(out_dir, "pretrain.json")
    with open(paths["pretrain"], "w") as f:
        json.dump(pretrain, f, indent=0)
    paths["tokenizer"] = os.path.join(out_dir, "tokenizer")
    vocab = train_tokenizer(texts, paths["tokenizer"])
    paths["images"] = os.path.join(out_dir, "images")
    paths["info"] = os.path.join(out_dir, "info.json")
    with open(paths["info"], "w") as f:
        json.dump({"num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
                   "image_size": image_size, "families": list(families),
                   "questions_per_image": questions_per_image, "vocab_size": vocab,
                   "object_radius": gen.r}, f, indent=1)
    if write_tfds:
        from vlm_spatial.data.tfds_synthetic import build_tfds

        paths["tfds"] = build_tfds(out_dir)
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="python -m vlm_spatial.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num_train", type=int, default=4000)
    p.add_argument("--num_val", type=int, default=500)
    p.add_argument("--num_test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    p.add_argument("--questions_per_image", type=int, default=1)
    p.add_argument("--tfds", action="store_true", help="also write the TFDS ArrayRecord dataset")
    a = p.parse_args(argv)
    paths = generate(a.out, a.num_train, a.num_val, a.num_test, a.seed, a.image_size,
                     [f for f in a.families.split(",") if f], a.questions_per_image, a.tfds)
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == "__main__":
    main()
