"""Templates, tokens and label masks on records in the exact shape of LLaVA's 558K and 665K files.

Expectations are written out by hand as token strings: ``[IMG]`` is an image slot and ``{tok}``
marks a token that carries the loss (label == input id); everything else has label -100.
"""
import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vlm_spatial.data import synthetic
from vlm_spatial.data.bad_records import BadRecordError
from vlm_spatial.data.templates import (IGNORE_INDEX, VICUNA_SYSTEM, ConversationEncoder, load_tokenizer,
                                        render, validate_turns)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
IMG = 999  # the model's image token id (outside the tokenizer's vocabulary on purpose)
N_SLOTS = 3
SYS = ("A chat between a curious user and an artificial intelligence assistant . The assistant gives "
       "helpful , detailed , and polite answers to the user ' s questions .")
SLOTS = " ".join(["[IMG]"] * N_SLOTS)


def _records(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


P558 = _records("blip_laion_cc_sbu_558k_sample.json")
P665 = _records("llava_v1_5_mix665k_sample.json")


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    """A word-level HF tokenizer (the synthetic set's trainer) over the fixtures' text."""
    d = str(tmp_path_factory.mktemp("word_tok"))
    texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [t["value"] for r in P558 + P665 for t in r["conversations"]]
    synthetic.train_tokenizer(texts, d)
    return d


def show(tok, out) -> str:
    parts = []
    for i, lab in zip(out["input_ids"], out["labels"]):
        s = "[IMG]" if i == IMG else tok.convert_ids_to_tokens(int(i))
        if lab != IGNORE_INDEX:
            assert lab == i
            s = "{" + s + "}"
        parts.append(s)
    return " ".join(parts)


def loss(words: str) -> str:
    return " ".join("{" + w + "}" for w in words.split())


def encode(tok_dir, template, record, max_len=512):
    enc = ConversationEncoder(tok_dir, template, max_len, N_SLOTS, IMG)
    return enc.encode(record, has_image="image" in record, rid=record["id"])


def test_vicuna_v1_renders_llava_conv_vicuna_v1_exactly():
    # LLaVA-1.5 llava/conversation.py conv_vicuna_v1: SeparatorStyle.TWO, sep=" ", sep2="</s>".
    text, spans = render(validate_turns(P665[0], "x"), "vicuna_v1", "</s>", True)
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat are the "
        "colors of the bus in the image? ASSISTANT: The bus in the image is white and red.</s>USER: "
        "What feature can be seen on the back of the bus? ASSISTANT: The back of the bus features an "
        "advertisement.</s>")
    assert [text[s:e] for s, e in spans] == ["The bus in the image is white and red.</s>",
                                             "The back of the bus features an advertisement.</s>"]
    # marker after the question: moved to the front as LLaVA's preprocess_multimodal does
    text, _ = render(validate_turns(P665[1], "x"), "vicuna_v1", "</s>", True)
    assert "USER: <image>\nIs the sky dark?\nAnswer the question using a single word or phrase. ASSISTANT: Yes</s>" in text
    text, spans = render(validate_turns(P558[0], "x"), "plain", "</s>", True)
    assert text == "<image>select luxury furniture 3 - inch gel memory foam mattress topper\n"
    assert text[spans[0][0]:] == text[len("<image>"):]


def test_plain_558k_tokens_and_labels(word_tok):
    tok = AutoTokenizer.from_pretrained(word_tok)
    got = [show(tok, encode(word_tok, "plain", r)) for r in P558]
    assert got == [
        f"<s> {SLOTS} " + loss("select luxury furniture 3 - inch gel memory foam mattress topper"),
        f"<s> {SLOTS} " + loss("a grey watch with an army style strap"),
        f"<s> {SLOTS} " + loss("the red sailboat on the lake at sunset"),
    ]


def test_vicuna_v1_665k_tokens_and_labels(word_tok):
    tok = AutoTokenizer.from_pretrained(word_tok)
    got = [show(tok, encode(word_tok, "vicuna_v1", r)) for r in P665]
    assert got == [
        # multi-turn COCO record, marker first
        f"<s> {SYS} USER : {SLOTS} What are the colors of the bus in the image ? ASSISTANT : "
        + loss("The bus in the image is white and red . </s>")
        + " USER : What feature can be seen on the back of the bus ? ASSISTANT : "
        + loss("The back of the bus features an advertisement . </s>"),
        # GQA record whose <image> comes after the question: slots where LLaVA puts the marker
        f"<s> {SYS} USER : {SLOTS} Is the sky dark ? Answer the question using a single word or phrase . "
        "ASSISTANT : " + loss("Yes </s>"),
        # text-only ShareGPT record (no "image" key): no slots
        f"<s> {SYS} USER : How to tell if a customer segment is well segmented ? In 3 bullet points . "
        "ASSISTANT : " + loss("1 . Homogeneity 2 . Distinctiveness 3 . Reachability </s>"),
        # three-turn OCR-VQA record, marker after the first question
        f"<s> {SYS} USER : {SLOTS} Who wrote this book ? ASSISTANT : " + loss("Lonely Planet </s>")
        + " USER : What is the title of this book ? ASSISTANT : " + loss("Lonely Planet Italy </s>")
        + " USER : Is this a travel book ? ASSISTANT : " + loss("Yes </s>"),
    ]


def test_truncation_never_cuts_the_image_slots(word_tok):
    full = encode(word_tok, "vicuna_v1", P665[0])
    n = len(full["input_ids"])
    assert n == 85  # bos + 29 system + "USER :" + 3 slots + 11 + "ASSISTANT :" + 11 + 2 + 12 + 2 + 10
    slots_end = 1 + 29 + 2 + N_SLOTS
    first_label = slots_end + 11 + 2
    for max_len in range(1, n + 2):
        try:
            out = encode(word_tok, "vicuna_v1", P665[0], max_len=max_len)
        except BadRecordError as e:
            assert e.record_id == "000000033471"
            # too short for the slots, or for a single answer token
            assert (e.reason, max_len < slots_end) in {("too_long", True), ("no_labels", False)}
            assert max_len <= first_label
            continue
        assert max_len > first_label
        k = min(max_len, n)
        assert (out["input_ids"] == IMG).sum() == N_SLOTS
        np.testing.assert_array_equal(out["input_ids"], full["input_ids"][:k])
        np.testing.assert_array_equal(out["labels"], full["labels"][:k])


def test_prompt_is_the_training_prefix(word_tok):
    """encode_prompt (generation) with an already loaded tokenizer, as the inference API uses it."""
    tok = load_tokenizer(word_tok)
    for template in ("vicuna_v1", "plain"):
        enc = ConversationEncoder(tok, template, None, N_SLOTS, IMG)
        for r in P665 if template == "vicuna_v1" else P558:
            out = encode(word_tok, template, r)
            first = int(np.flatnonzero(out["labels"] != IGNORE_INDEX)[0])
            ids = enc.encode_prompt(r["conversations"][0]["value"], has_image="image" in r)
            np.testing.assert_array_equal(ids, out["input_ids"][:first])


@pytest.fixture(scope="module")
def llama_style_tok(tmp_path_factory):
    """A LLaMA-style BPE tokenizer (Metaspace '▁', byte fallback, <s>/</s>) trained with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [t["value"].replace("<image>", "") for r in P558 + P665
                                                   for t in r["conversations"]]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=["\n"], show_progress=False))
    d = str(tmp_path_factory.mktemp("llama_tok"))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
    return d


def test_llama_style_tokenizer_matches_llava_tokenizer_image_token(llama_style_tok):
    """Pieces around <image> are tokenized separately (LLaVA's tokenizer_image_token), bos first,
    and every run of loss tokens decodes to exactly one answer followed by </s>."""
    tok = load_tokenizer(llama_style_tok)
    assert tok.convert_tokens_to_ids("<image>") == len(tok) - 1  # added because it was missing
    out = encode(llama_style_tok, "vicuna_v1", P665[3])
    ids = out["input_ids"].tolist()
    assert tok.unk_token_id not in ids

    def piece(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    before = VICUNA_SYSTEM + " USER: "
    after = ("\nWho wrote this book? ASSISTANT: Lonely Planet</s>USER: What is the title of this book? "
             "ASSISTANT: Lonely Planet Italy</s>USER: Is this a travel book? ASSISTANT: Yes</s>")
    assert ids == [tok.bos_token_id] + piece(before) + [IMG] * N_SLOTS + piece(after)
    is_loss = out["labels"] != IGNORE_INDEX
    edges = np.flatnonzero(np.diff(np.r_[0, is_loss.astype(int), 0]))
    runs = [tok.decode(out["input_ids"][s:e]).strip() for s, e in zip(edges[::2], edges[1::2])]
    assert runs == ["Lonely Planet</s>", "Lonely Planet Italy</s>", "Yes</s>"]
    text_only = encode(llama_style_tok, "vicuna_v1", P665[2])
    assert text_only["input_ids"].tolist() == [tok.bos_token_id] + piece(
        VICUNA_SYSTEM + " USER: How to tell if a customer segment is well segmented? In 3 bullet points. "
        "ASSISTANT: 1. Homogeneity\n2. Distinctiveness\n3. Reachability</s>")
