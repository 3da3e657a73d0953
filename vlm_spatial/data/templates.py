"""Conversation templates, tokenization and label masks (LLaVA-1.5 conventions).

Templates (``template=`` everywhere):

* ``"plain"`` — stage 1 (caption pretraining, LLaVA ``conv_llava_plain``). A record must be one
  human turn carrying the ``<image>`` marker and one gpt turn (the caption). The human text is
  replaced by the marker alone, exactly as LLaVA's ``preprocess_plain`` does:
  ``text = "<image>" + caption + "\\n"``; loss on ``caption + "\\n"``. A text-only record is
  encoded as ``caption + "\\n"`` (all loss).
* ``"vicuna_v1"`` — stage 2 (LLaVA ``conv_vicuna_v1``, separator style TWO)::

      {SYSTEM} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...

  with ``SYSTEM`` = :data:`VICUNA_SYSTEM`; ``</s>`` is the tokenizer's eos token. The ``<image>``
  marker is moved to the front of its turn (``"<image>\\n" + rest.strip()``) as LLaVA's
  ``preprocess_multimodal`` does. Loss only on each answer and the eos token that ends it. As in
  LLaVA, a leading gpt turn (conversation not starting with the human) is dropped.

Both prepend the tokenizer's bos token when it has one (``add_bos``). The whole string is tokenized
once (so the tokens equal what the tokenizer gives the full prompt); tokens are assigned to the loss
by their character offsets; the single ``<image>`` token is then expanded to ``num_image_tokens``
copies of ``image_token_id`` (the *model's* id, which may differ from the tokenizer's), labels
``-100`` there.

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
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = {"human": "USER", "gpt": "ASSISTANT"}


def load_tokenizer(tokenizer_dir: str):
    """Loads a Hugging Face tokenizer from a local directory; adds ``<image>`` if it is missing.

    Returns the ``transformers`` tokenizer with ``<image>`` as a special (never split) token.
    """
    from transformers import AutoTokenizer  # local import: worker processes never need it

    tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir))
    if IMAGE_MARKER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_MARKER]})
    return tok


def record_id(record: Any, fallback: str) -> str:
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


def render(turns: list[tuple[str, str]], template: str, eos_token: str,
           has_image: bool) -> tuple[str, list[tuple[int, int]]]:
    """The template's text and the character spans ``[(start, end))`` that carry the loss."""
    spans = []
    if template == "plain":
        if len(turns) != 2:
            raise BadRecordError("?", "bad_turn_order", f"plain template needs 1 question + 1 caption, got {len(turns)} turns")
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
            if IMAGE_MARKER in msg:
                msg = IMAGE_MARKER + "\n" + msg.replace(IMAGE_MARKER, "").strip()
            text += "USER: " + msg + " "
        else:
            text += "ASSISTANT: "
            start = len(text)
            text += msg + eos_token
            spans.append((start, len(text)))
    return text, spans


class ConversationEncoder:
    """Turns LLaVA records into ``input_ids``/``labels`` (int32 ``[L]``, ``L <= max_len``).

    Args:
      tokenizer_dir: a local Hugging Face tokenizer directory (``<image>`` added if missing).
      template: ``"plain"`` or ``"vicuna_v1"``.
      max_len: longest sequence kept (tail truncation; image slots never cut).
      num_image_tokens: image slots per image (e.g. 576 for CLIP-L/14-336 without CLS).
      image_token_id: id written into the image slots (the model config's ``image_token_id``).
      add_bos: prepend the tokenizer's bos token (if it has one), as LLaVA does.

    Picklable: worker processes rebuild the fast ``tokenizers.Tokenizer`` from its JSON and never
    import ``transformers``.
    """

    def __init__(self, tokenizer_dir: str, template: str, max_len: int, num_image_tokens: int,
                 image_token_id: int, add_bos: bool = True):
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; one of {TEMPLATES}")
        tok = load_tokenizer(tokenizer_dir)
        self.template = template
        self.max_len = int(max_len)
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = int(image_token_id)
        self.marker_id = int(tok.convert_tokens_to_ids(IMAGE_MARKER))
        self.bos_id = tok.bos_token_id if add_bos else None
        self.eos_token = tok.eos_token or ""
        self.eos_id = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._tok_json = tok.backend_tokenizer.to_str()
        self._backend = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_backend"] = None
        return state

    @property
    def backend(self):
        if self._backend is None:
            import tokenizers

            self._backend = tokenizers.Tokenizer.from_str(self._tok_json)
        return self._backend

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, np.int64)
        offs = np.asarray(enc.offsets, np.int64).reshape(-1, 2)
        target = np.zeros(len(ids), bool)
        s, e = offs[:, 0], offs[:, 1]
        for ts, te in spans:
            target |= ((s < te) & (e > ts)) | ((s == e) & (s >= ts) & (s < te))
        return ids, target

    def encode(self, record: dict, has_image: bool, rid: str = "?") -> dict[str, np.ndarray]:
        """Returns ``{"input_ids": int32 [L], "labels": int32 [L]}``; raises BadRecordError."""
        turns = validate_turns(record, rid)
        check_markers(turns, has_image, rid)
        try:
            text, spans = render(turns, self.template, self.eos_token, has_image)
        except BadRecordError as e:
            raise BadRecordError(rid, e.reason, e.detail) from None
        ids, target = self._tokenize(text, spans)
        labels = np.where(target, ids, IGNORE_INDEX)
        marker_pos = np.flatnonzero(ids == self.marker_id)
        if len(marker_pos) != (1 if has_image else 0):
            raise BadRecordError(rid, "multiple_image_markers",
                                 f"<image> tokenized to {len(marker_pos)} tokens")
        pieces_ids, pieces_lab = [], []
        if self.bos_id is not None:
            pieces_ids.append([self.bos_id])
            pieces_lab.append([IGNORE_INDEX])
        image_end = None
        if has_image:
            p = int(marker_pos[0])
            pieces_ids += [ids[:p], np.full(self.num_image_tokens, self.image_token_id), ids[p + 1:]]
            pieces_lab += [labels[:p], np.full(self.num_image_tokens, IGNORE_INDEX), labels[p + 1:]]
            image_end = sum(len(x) for x in pieces_ids[:-1])
        else:
            pieces_ids.append(ids)
            pieces_lab.append(labels)
        input_ids = np.concatenate(pieces_ids).astype(np.int32)
        out_labels = np.concatenate(pieces_lab).astype(np.int32)
        if len(input_ids) > self.max_len:
            if image_end is not None and image_end > self.max_len:
                raise BadRecordError(rid, "too_long", f"image slots end at {image_end} > max_len={self.max_len}")
            input_ids, out_labels = input_ids[: self.max_len], out_labels[: self.max_len]
        if not (out_labels != IGNORE_INDEX).any():
            raise BadRecordError(rid, "no_labels", f"no answer token within max_len={self.max_len}")
        return {"input_ids": input_ids, "labels": out_labels}

    def encode_prompt(self, question: str, has_image: bool = True) -> np.ndarray:
        """Generation prompt for one question: int32 ``[L]`` ending where the answer starts.

        vicuna_v1: ``bos SYSTEM USER: <image>\\n{question} ASSISTANT:``; plain: ``bos <image>``.
        The image marker is expanded to ``num_image_tokens`` slots as in :meth:`encode`.
        """
        if self.template == "plain":
            text = IMAGE_MARKER if has_image else ""
        else:
            q = question.replace(IMAGE_MARKER, "").strip()
            if has_image:
                q = IMAGE_MARKER + "\n" + q
            text = VICUNA_SYSTEM + " USER: " + q + " ASSISTANT:"
        ids = np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int64)
        out = [] if self.bos_id is None else [self.bos_id]
        for t in ids:
            if t == self.marker_id:
                out.extend([self.image_token_id] * self.num_image_tokens)
            else:
                out.append(int(t))
        return np.asarray(out, np.int32)
