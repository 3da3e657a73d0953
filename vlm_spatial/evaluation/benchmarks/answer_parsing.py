"""Answer extraction shared by every benchmark module: option letters, yes/no, counts, VQA text.

Nothing here is benchmark specific; each benchmark module picks the rule its reference harness
uses. All functions are pure and total: they return ``None`` (never raise) for an answer they
cannot read, and the caller scores ``None`` as wrong and counts it as unparsed.

Sources (read and re-implemented):

* ``can_infer_option`` / ``can_infer_text`` / ``can_infer`` -- VLMEvalKit
  ``vlmeval/utils/matching_util.py``, in the revision a `RuleSet` names (``evaluation/rules.py``
  lists them and their commits). Option rule: replace each of ``.()[],:;!*#{}`` by a space and
  split on whitespace; if exactly one option letter occurs as a whole token, that letter is the
  answer -- anywhere (2025-04), or only if its first occurrence is among the last 4 tokens
  (since 2025-08-04); if none occurs but a bare ``Z`` does, the answer is ``Z`` (VLMEvalKit's
  "refused", scored wrong); since 2026-06-17 a failed token rule then tries "answer is **B**".
  Text rule (tried when the option rule fails): exactly one option's lower-cased text is a
  substring of the lower-cased answer -- since 2025-08-04 only for answers at most twice the
  options' combined text.
* exact-matching MCQ scoring -- VLMEvalKit ``vlmeval/dataset/utils/multiple_choice.py``
  (``extract_answer_from_item`` with no judge model): the prediction is ``str()``-ed, ``can_infer``
  is tried, and a failure becomes option ``'Z'`` (wrong); ``hit = (opt == GT)``.
* ``yorn_extraction`` -- VLMEvalKit ``vlmeval/dataset/utils/yorn.py::YOrN_Extraction``:
  lower-case, VQA punctuation processing, split into words; ``Yes`` iff ``yes`` is a word and
  ``no`` is not, ``No`` iff the reverse, otherwise ``Unknown`` (scored wrong).
* ``process_punctuation`` / ``process_digit_article`` / ``vqa_normalize`` -- VLMEvalKit
  ``vlmeval/smp/misc.py::process_punctuation`` and ``vlmeval/dataset/utils/vqa_eval.py``
  (``_process_digit_article``, ``process_answer``), themselves the official VQA evaluation
  (GT-Vision-Lab/VQA ``vqaEval.py``): number words zero..ten become digits, articles are
  dropped, contractions restored. Upstream passes ``re.UNICODE`` as the *count* of the
  period substitution (at most 32 periods are removed); kept as is.
* ``count_from_text`` -- VLMEvalKit ``vlmeval/dataset/utils/tallyqa.py::text_to_int``: the
  first whole-word count 0..20 written as digits or as an English number word.
* ``mmmu_parse_multi_choice`` / ``mmmu_parse_open`` / ``mmmu_eval_open`` -- MMMU
  ``eval/eval_utils.py`` (``parse_multi_choice_response``, ``parse_open_response``,
  ``eval_open``, ``normalize_str``, ``extract_numbers``). MMMU picks a random option when a
  multiple-choice answer does not parse; here ``None`` is returned and the MMMU module applies
  a seeded pick, so the number of random picks is visible.
* ``llava_mcq_prompt`` -- VLMEvalKit ``vlmeval/vlm/llava/llava.py::LLaVA.build_prompt`` (used
  for every multiple-choice dataset): ``[hint + "\\n"] + question + "".join(f"\\n{L}. {text}")``
  then ``"\\nAnswer with the option's letter from the given choices directly."``
  (``"\\n请直接回答选项字母。"`` if the text has Chinese characters); with no options
  ``"\\nAnswer the question directly."`` (``"\\n请直接回答问题。"``).
"""
from __future__ import annotations

import re
import string
from typing import Mapping, Optional, Sequence

from ..rules import RuleSet, get_rules

LLAVA_MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
LLAVA_MCQ_SUFFIX_CN = "\n请直接回答选项字母。"
LLAVA_OPEN_SUFFIX = "\nAnswer the question directly."
LLAVA_OPEN_SUFFIX_CN = "\n请直接回答问题。"
VQA_SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
LETTERS = string.ascii_uppercase

_OPTION_PUNCT = ".()[],:;!*#{}"
_REJECTIONS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def is_chinese(text: str) -> bool:
    """VLMEvalKit ``cn_string``: True if the text has a CJK unified ideograph."""
    return re.search("[\u4e00-\u9fff]", text or "") is not None


# --------------------------------------------------------------------------- multiple choice
def llava_mcq_prompt(question: str, options: Mapping[str, str], hint: Optional[str] = None) -> str:
    """VLMEvalKit's LLaVA prompt for a multiple-choice row (see the module docstring).

    ``options`` maps letters to option texts in display order; an empty mapping gives the
    open-question form. Returns the user text (the model adds its conversation template).
    """
    text = f"{hint}\n{question}" if hint else question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    if options:
        return text + (LLAVA_MCQ_SUFFIX_CN if is_chinese(text) else LLAVA_MCQ_SUFFIX)
    return text + (LLAVA_OPEN_SUFFIX_CN if is_chinese(text) else LLAVA_OPEN_SUFFIX)


def can_infer_option(answer: str, choices: Mapping[str, str], letter_window: Optional[int] = None,
                     verbose_answer_pattern: bool = False) -> Optional[str]:
    """The one option letter written as a whole token in ``answer`` ('Z' = refusal), or None.

    ``letter_window``: the letter counts only if its first occurrence is among the last N tokens
    (None: anywhere). ``verbose_answer_pattern``: when the tokens give no answer (and no 'Z'),
    take the letter of "answer is B" / "correct answer is **B**" (A-D, any case).
    """
    answer = str(answer)
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REJECTIONS):
        return "Z"
    mod = answer
    for ch in _OPTION_PUNCT:
        mod = mod.replace(ch, " ")
    tokens = mod.split()
    present = [c for c in choices if c in tokens]
    if len(present) == 1:
        if letter_window is None or tokens.index(present[0]) > len(tokens) - letter_window - 1:
            return present[0]
    elif not present and "Z" in tokens:
        return "Z"
    if verbose_answer_pattern:
        m = _VERBOSE_ANSWER.search(answer)
        if m and m.group(1).upper() in choices:
            return m.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str], length_cap: bool = False) -> Optional[str]:
    """The one option whose lower-cased text is inside the lower-cased answer, or None.

    ``length_cap``: None for an answer longer than twice the options' combined text.
    """
    answer = str(answer).lower()
    if length_cap and len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: Mapping[str, str], rules: Optional[RuleSet] = None) -> Optional[str]:
    """VLMEvalKit ``can_infer`` under ``rules`` (default `DEFAULT_RULES`): option, then text rule."""
    rules = get_rules(rules)
    return (can_infer_option(answer, choices, rules.letter_window, rules.verbose_answer_pattern)
            or can_infer_text(answer, choices, rules.text_rule_length_cap))


def vlmevalkit_mcq_extract(prediction, choices: Mapping[str, str],
                           rules: Optional[RuleSet] = None) -> Optional[str]:
    """Exact-matching MCQ extraction under ``rules``: a letter of ``choices``, or None ('Z').

    A refusal ('Z') is returned as None: it can never equal a gold letter.
    """
    if prediction is None:
        return None
    letter = can_infer(str(prediction), dict(choices), rules)
    return letter if letter in choices else None


# --------------------------------------------------------------------------- VQA normalisation
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "isnt": "isn't",
    "itll": "it'll", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's",
    "theyre": "they're", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
}


def process_punctuation(text: str) -> str:
    """VQA-eval punctuation handling (VLMEvalKit ``process_punctuation``), str -> str."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)


def process_digit_article(text: str) -> str:
    """Number words -> digits, drop articles, restore contractions (VQA eval), str -> str."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_normalize(text) -> str:
    """VLMEvalKit ``process_answer``: whitespace, punctuation, then digits/articles."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


# --------------------------------------------------------------------------- yes / no
def yorn_extraction(output) -> Optional[str]:
    """VLMEvalKit ``YOrN_Extraction``: 'Yes', 'No', or None for its 'Unknown'."""
    if output is None:
        return None
    words = process_punctuation(str(output).lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return None


# --------------------------------------------------------------------------- counts
_COUNT_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_COUNT_RE = re.compile(r"(\b([0-9]|1[0-9]|20)\b|\b(" + "|".join(_COUNT_WORDS) + r")\b)")


def count_from_text(text) -> Optional[int]:
    """First whole-word count 0..20 in ``text`` ("two" -> 2, "3 dogs" -> 3, "25" -> None)."""
    if text is None:
        return None
    m = _COUNT_RE.search(str(text).lower())
    if m is None:
        return None
    found = m.group()
    return int(found) if found.isdigit() else _COUNT_WORDS[found]


# --------------------------------------------------------------------------- MMMU
def mmmu_parse_multi_choice(response: str, all_choices: Sequence[str],
                            index2ans: Mapping[str, str]) -> Optional[str]:
    """MMMU ``parse_multi_choice_response`` without its random fallback: a letter or None."""
    response = str(response)
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = " " + response + " "
    index_ans, with_brackets, candidates = True, False, []
    for c in all_choices:
        if f"({c})" in response:
            candidates.append(c)
            with_brackets = True
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        for c, ans in index2ans.items():
            if str(ans).lower() in response.lower():
                candidates.append(c)
                index_ans = False
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        pattern = "({})" if with_brackets else " {} "
        starts = [response.rfind(pattern.format(c)) for c in candidates]
    else:
        starts = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    return candidates[max(range(len(starts)), key=lambda i: starts[i])]


def _check_is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def mmmu_normalize_str(text) -> list:
    """MMMU ``normalize_str``: [rounded float] for numbers, else the lower-cased string."""
    text = str(text).strip()
    if _check_is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _extract_numbers(text: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def mmmu_parse_open(response: str) -> list:
    """MMMU ``parse_open_response``: normalised key sub-responses and the numbers in them."""
    response = str(response).strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", response)  # upstream splits after lower(): kept
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for i, resp in enumerate(subs):
        if i == len(subs) - 1:
            indicators = indicators + ["="]
        shortest = None
        for ind in indicators:
            if ind in resp:
                cand = resp.split(ind)[-1].strip()
                if not shortest or len(cand) < len(shortest):
                    shortest = cand
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", "'"]:
            keys.append(shortest)
    if not keys:
        keys = [response]
    preds = list(keys)
    for k in keys:
        preds.extend(_extract_numbers(k))
    out = []
    for p in preds:
        out.extend(mmmu_normalize_str(p))
    return list(dict.fromkeys(out))


def mmmu_eval_open(gold, preds: list) -> bool:
    """MMMU ``eval_open``: a normalised gold string inside a predicted string, or equal numbers."""
    golds = []
    for g in (gold if isinstance(gold, list) else [gold]):
        golds.extend(mmmu_normalize_str(g))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False
