"""Conversation templates, tokenization and label masks (LLaVA-1.5 conventions).

Templates (``template=`` everywhere):

* ``"plain"`` — stage 1 (caption pretraining, LLaVA ``conv_llava_plain`` / ``preprocess_plain``).
  A record must be one human turn carrying the ``<image>`` marker and one gpt turn (the caption).
  The human text is replaced by the marker alone: ``text = "<image>" + caption + "\\n"``; loss on
  ``caption + "\\n"``. A text-only record is encoded as ``caption + "\\n"`` (all loss).
* ``"vicuna_v1"`` — stage 2 (LLaVA ``conv_vicuna_v1``, ``--version v1``, separator style TWO)::

      {SYSTEM} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...

  with ``SYSTEM`` = :data:`VICUNA_SYSTEM`; ``</s>`` is the tokenizer's eos token. The ``<image>``
  marker is moved to the front of its turn (``("<image>\\n" + rest.strip()).strip()``) as LLaVA's
  ``preprocess_multimodal`` does. Loss only on each answer and the eos token that ends it. As in
  LLaVA's ``preprocess_v1``, a leading gpt turn (conversation not starting with the human) is dropped.

Tokenization follows LLaVA's ``tokenizer_image_token``: the rendered text is split at the
``<image>`` marker and each piece is tokenized on its own (no special tokens added), the image
slots (``num_image_tokens`` copies of the *model's* ``image_token_id``) go between the pieces and
the tokenizer's bos token goes first (``add_bos``). Tokens are assigned to the loss by their
character offsets; labels are ``-100`` on the prompt, the image slots and bos.

Truncation to ``max_len`` cuts the tail only; if the image slots would not fit whole, or no target
token survives, the record is rejected with a :class:`~vlm_spatial.data.bad_records.BadRecordError`
(``too_long`` / ``no_labels``), as are malformed conversations (``no_conversations``,
``unknown_role``, ``bad_turn_order``, ``marker_without_image``, ``image_without_marker``,
``multiple_image_markers``, ``multiple_images``, ``malformed_record``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from vlm_spatial.data.bad_records import BadRecordError

IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100
TEMPLATES = ("plain", "vicuna_v1")
# LLaVA-1.5 `conv_vicuna_v1.system` (llava/conversation.py), the template of `--version v1`.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ROLES = {"human": "USER", "gpt": "ASSISTANT"}


def load_tokenizer(tokenizer_dir: str):
    """Loads a Hugging Face tokenizer from a local directory (no network).

    Returns the ``transformers`` tokenizer, with ``<image>`` added as a special token if missing.
    """
    from transformers import AutoTokenizer  # local import: worker processes never need it

    tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir), local_files_only=True)
    if IMAGE_MARKER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_MARKER]})
    return tok


def record_id(record: Any, fallback: str) -> str:
    """The record's ``id`` as a string, or ``fallback`` when it has none."""
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return fallback


def record_image(record: dict, rid: str) -> str | None:
    """The record's single image path (relative to its root) or None for a text-only record."""
    image = record.get("image")
    if image is None or image == "":
        return None
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            return None
        if len(image) > 1:
            raise BadRecordError(rid, "multiple_images", f"{len(image)} images")
        image = image[0]
    if not isinstance(image, str):
        raise BadRecordError(rid, "malformed_record", f"'image' is a {type(image).__name__}")
    return image


def validate_turns(record: dict, rid: str) -> list[tuple[str, str]]:
    """Returns the conversation as ``[(role, text)]`` with role in {"human", "gpt"}, checked."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise BadRecordError(rid, "no_conversations",
                             "missing" if convs is None else f"empty or not a list: {str(convs)[:40]!r}")
    turns = []
    for j, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadRecordError(rid, "malformed_record", f"turn {j} is not {{'from', 'value': str}}")
        role = turn.get("from")
        if role not in ROLES:
            raise BadRecordError(rid, "unknown_role", f"turn {j} has from={role!r}")
        turns.append((role, turn["value"]))
    if turns[0][0] != "human":  # LLaVA: "Skip the first one if it is not from human"
        turns = turns[1:]
    if not turns:
        raise BadRecordError(rid, "no_conversations", "no human turn")
    for j, (role, _) in enumerate(turns):
        if role != ("human", "gpt")[j % 2]:
            raise BadRecordError(rid, "bad_turn_order", f"turn {j} is {role!r}; turns must alternate human/gpt")
    if turns[-1][0] != "gpt":
        raise BadRecordError(rid, "bad_turn_order", "the last turn is not an answer")
    return turns


def check_markers(turns: list[tuple[str, str]], has_image: bool, rid: str) -> None:
    """Raises BadRecordError unless the record has exactly one ``<image>`` marker (in a question)
    when it has an image, and none when it has not."""
    counts = [text.count(IMAGE_MARKER) for _, text in turns]
    n = sum(counts)
    if n > 1:
        raise BadRecordError(rid, "multiple_image_markers", f"{n} markers")
    if n == 1 and not has_image:
        raise BadRecordError(rid, "marker_without_image", "<image> marker but no 'image' field")
    if n == 0 and has_image:
        raise BadRecordError(rid, "image_without_marker", "'image' field but no <image> marker")
    if n == 1 and turns[counts.index(1)][0] != "human":
        raise BadRecordError(rid, "malformed_record", "the <image> marker is in an answer")


def _marker_first(msg: str) -> str:
    """LLaVA's ``preprocess_multimodal``: the marker moves to the front, followed by a newline."""
    if IMAGE_MARKER not in msg:
        return msg
    return (IMAGE_MARKER + "\n" + msg.replace(IMAGE_MARKER, "").strip()).strip()


def render(turns: list[tuple[str, str]], template: str, eos_token: str,
           has_image: bool, rid: str = "?") -> tuple[str, list[tuple[int, int]]]:
    """The template's text and the character spans ``[(start, end))`` that carry the loss."""
    spans = []
    if template == "plain":
        if len(turns) != 2:
            raise BadRecordError(rid, "bad_turn_order",
                                 f"the plain template needs 1 question + 1 caption, got {len(turns)} turns")
        text = IMAGE_MARKER if has_image else ""
        start = len(text)
        text += turns[1][1] + "\n"
        spans.append((start, len(text)))
        return text, spans
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}; one of {TEMPLATES}")
    text = VICUNA_SYSTEM + " "
    for role, msg in turns:
        if role == "human":
            text += "USER: " + _marker_first(msg) + " "
        else:
            text += "ASSISTANT: "
            start = len(text)
            text += msg + eos_token
            spans.append((start, len(text)))
    return text, spans


def render_prompt(question: str, template: str, has_image: bool) -> str:
    """Generation prompt text, ending where the answer starts.

    vicuna_v1: ``SYSTEM USER: <image>\\n{question} ASSISTANT:`` (LLaVA's ``get_prompt`` with an empty
    assistant message); plain: ``<image>`` (stage 1 captions ignore the question).
    """
    if template == "plain":
        return IMAGE_MARKER if has_image else ""
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}; one of {TEMPLATES}")
    q = question.replace(IMAGE_MARKER, "").strip()
    if has_image:
        q = _marker_first(IMAGE_MARKER + q)
    return VICUNA_SYSTEM + " USER: " + q + " ASSISTANT:"


class ConversationEncoder:
    """Turns LLaVA records into ``input_ids``/``labels`` (int32 ``[L]``, ``L <= max_len``).

    Args:
      tokenizer: a local Hugging Face tokenizer directory (``<image>`` added if missing) or an
        already loaded fast ``transformers`` tokenizer.
      template: ``"plain"`` or ``"vicuna_v1"``.
      max_len: longest sequence kept (tail truncation; image slots never cut); None = no limit.
      num_image_tokens: image slots per image (e.g. 576 for CLIP-L/14-336 without CLS).
      image_token_id: id written into the image slots (the model config's ``image_token_id``).
      add_bos: prepend the tokenizer's bos token (if it has one), as LLaVA does.

    Picklable: worker processes rebuild the fast ``tokenizers.Tokenizer`` from its JSON and never
    import ``transformers``.
    """

    def __init__(self, tokenizer, template: str, max_len: int | None, num_image_tokens: int,
                 image_token_id: int, add_bos: bool = True):
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; one of {TEMPLATES}")
        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        if not hasattr(tok, "backend_tokenizer"):
            raise ValueError(f"{type(tok).__name__} is not a fast (tokenizers-backed) tokenizer")
        self.template = template
        self.max_len = None if max_len is None else int(max_len)
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = int(image_token_id)
        self.bos_id = tok.bos_token_id if add_bos else None
        self.eos_token = tok.eos_token or ""
        self.eos_id = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._backend = tok.backend_tokenizer

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_backend"] = self._backend.to_str()
        return state

    def __setstate__(self, state):
        import tokenizers

        self.__dict__.update(state)
        self._backend = tokenizers.Tokenizer.from_str(state["_backend"])

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, int | None]:
        """``(ids int32 [L], is_target bool [L], index after the image slots or None)``."""
        ids = [np.asarray([] if self.bos_id is None else [self.bos_id], np.int32)]
        target = [np.zeros(len(ids[0]), bool)]
        image_end = None
        pos = 0
        for k, piece in enumerate(text.split(IMAGE_MARKER)):
            if k:
                ids.append(np.full(self.num_image_tokens, self.image_token_id, np.int32))
                target.append(np.zeros(self.num_image_tokens, bool))
                image_end = sum(len(x) for x in ids)
                pos += len(IMAGE_MARKER)
            enc = self._backend.encode(piece, add_special_tokens=False)
            offsets = np.asarray(enc.offsets, np.int64).reshape(-1, 2) + pos
            s, e = offsets[:, 0], offsets[:, 1]
            hit = np.zeros(len(s), bool)
            for ts, te in spans:  # overlaps the span (or is an empty token inside it)
                hit |= ((s < te) & (e > ts)) | ((s == e) & (s >= ts) & (s < te))
            ids.append(np.asarray(enc.ids, np.int32))
            target.append(hit)
            pos += len(piece)
        return np.concatenate(ids), np.concatenate(target), image_end

    def encode(self, record: dict, has_image: bool, rid: str = "?") -> dict[str, np.ndarray]:
        """Returns ``{"input_ids": int32 [L], "labels": int32 [L]}``; raises BadRecordError."""
        turns = validate_turns(record, rid)
        check_markers(turns, has_image, rid)
        text, spans = render(turns, self.template, self.eos_token, has_image, rid)
        ids, target, image_end = self._tokenize(text, spans)
        labels = np.where(target, ids, IGNORE_INDEX).astype(np.int32)
        if self.max_len is not None and len(ids) > self.max_len:
            if image_end is not None and image_end > self.max_len:
                raise BadRecordError(rid, "too_long", f"{len(ids)} tokens; the image slots end at "
                                                      f"{image_end} > max_len={self.max_len}")
            ids, labels = ids[: self.max_len], labels[: self.max_len]
        if not (labels != IGNORE_INDEX).any():
            raise BadRecordError(rid, "no_labels", f"no answer token within max_len={self.max_len}")
        return {"input_ids": ids, "labels": labels}

    def encode_prompt(self, question: str, has_image: bool = True) -> np.ndarray:
        """Generation prompt for one question (:func:`render_prompt`): int32 ``[L]``, image
        marker expanded to ``num_image_tokens`` slots as in :meth:`encode`."""
        return self._tokenize(render_prompt(question, self.template, has_image), [])[0]
