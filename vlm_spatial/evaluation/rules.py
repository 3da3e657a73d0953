"""Scoring rule sets: which harness revision a number is scored as, by name.

A benchmark number depends on the revision of the harness that scored it, not only on the model:
VLMEvalKit changed its multiple-choice matcher on 2025-08-04 and the scale of CountBenchQA on
2025-09-12. A rule set names one harness revision and holds, as data, every rule in which the
revisions differ for the paper's eleven benchmarks. It is chosen with ``--rules`` (``evaluate run |
score``, config field ``eval.rules``) and recorded in each predictions file's header, in every
``metrics.json`` (``"rules"``) and above the table of ``report.md``. ``evaluate score --rules NAME``
re-scores a predictions file under another rule set without a model.

Rule sets (VLMEvalKit, github open-compass/VLMEvalKit; each from reading the file at that commit):

``vlmevalkit-2025.04`` -- commit aca64dbb (2025-04-08), ``vlmeval/utils/matching_util.py`` as it
    stayed until c3371551 (2025-08-04). ``can_infer_option``: exactly one option letter among the
    answer's tokens (after ``.()[],:;!*#{}`` become spaces) is the answer, wherever it stands; no
    letter but a bare ``Z`` is VLMEvalKit's refusal. ``can_infer_text`` (tried when that fails):
    exactly one option text inside the lower-cased answer, whatever the answer's length.
    aca64dbb itself has 5 of the 11 benchmarks (GQA, MMMU, MME, CCBench, SEEDBench-IMG); the
    others came while this matcher was in force -- MMVP f8d3d8cf (2025-04-11), CV-Bench 41489af9
    (04-28), CountBenchQA 26cb557c (05-27, a fraction), TallyQA f7a9433a (06-07), VSR-zeroshot
    551c662a (07-20) -- except TopViewRS (d3aa188e), scored here with this matcher too.
``vlmevalkit-2025.09`` (the default) -- commit d3aa188e (2025-09-02), the first revision with all
    eleven of the paper's benchmarks (it adds TopViewRS), so the one that can have produced the
    paper's tables. Since c3371551 (2025-08-04): the letter counts only if its first occurrence
    is among the last 4 tokens (``splits.index(ch) > len(splits) - 5``), and the option-text rule
    is skipped when ``len(answer) > 2 * sum(len(option text))``. CountBenchQA ``accuracy`` is a
    fraction.
``vlmevalkit-2025.09.12`` -- commit 9cc14cd0 (2025-09-12): the matcher of 2025.09; CountBenchQA
    ``accuracy`` is x100 (``{'accuracy': accuracy * 100}``).
``vlmevalkit-2026.06`` -- commit a67ace50 (2026-06-17): adds to ``can_infer_option``, when the
    token rule finds nothing (and no refusal), the pattern
    ``(?i)(?:correct\\s+)?answer\\s+is\\s+\\**([ABCD])\\**`` (case-insensitive, so "the answer is
    a dog" reads as A). CountBenchQA x100. Since b77b16fb (2025-12-20) VLMEvalKit's MMVP "Overall"
    is the pair accuracy (``pair_acc`` here; ``question_acc``, the paper's number, is its
    "Average").

Unchanged across these revisions for the eleven benchmarks (and so not part of a rule set): the
yes/no extraction (``YOrN_Extraction``; its punctuation step's period rule changed in 928a95b0,
2025-05-13, but only for a period after a digit, which never makes or breaks the word yes/no),
``MME_rating``, the MCQ prompt, circular evaluation, MMMU's preprocessing, TallyQA's count.

Generation length. VLMEvalKit's LLaVA wrapper decodes greedily up to ``max_new_tokens=2048``
(``kwargs_default`` of ``vlmeval/vlm/llava/llava.py`` since 43af13e0, 2025-02-20; 512 before), and
every rule above reads the whole answer: the last-4 window, the yes/no words, CountBenchQA's
substring and TallyQA's first count all change when an answer is cut. So each benchmark whose
rule reads the answer generates up to `HARNESS_MAX_NEW_TOKENS` (decoding stops at EOS, so a model
that answers "B" still takes two steps). GQA keeps 16: its answers are compared whole with a gold
of a few words, so an answer longer than 16 tokens is wrong cut or uncut. The synthetic set keeps
16 (one-word answers, no harness). On the real model outputs in ``shared/benchmark_samples``
(LLaVA-1.5-13B, GPT-4V: at most 12 characters) the earlier defaults (16 to 128) cut no answer;
README "Evaluate" names the command.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

HARNESS_MAX_NEW_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """One harness revision's scoring rules (see the module docstring for each field's source).

    ``letter_window``: a bare option letter counts only among the last N tokens (None: anywhere).
    ``text_rule_length_cap``: skip the option-text rule when the answer is longer than twice the
    options' combined text. ``verbose_answer_pattern``: try "answer is **B**" after the token
    rule. ``countbenchqa_percent``: CountBenchQA ``accuracy`` x100 instead of a fraction.
    """

    name: str
    harness: str
    commit: str
    date: str
    letter_window: Optional[int]
    text_rule_length_cap: bool
    verbose_answer_pattern: bool
    countbenchqa_percent: bool
    summary: str

    def describe(self) -> str:
        """One line for a report: name, harness revision and what its rules are."""
        return f"**{self.name}** ({self.harness} {self.commit}, {self.date}): {self.summary}"


RULE_SETS = {r.name: r for r in (
    RuleSet("vlmevalkit-2025.04", "VLMEvalKit", "aca64dbb", "2025-04-08", None, False, False, False,
            "multiple-choice letter anywhere in the answer, option-text rule at any length; "
            "CountBenchQA as a fraction"),
    RuleSet("vlmevalkit-2025.09", "VLMEvalKit", "d3aa188e", "2025-09-02", 4, True, False, False,
            "multiple-choice letter among the last 4 tokens, option-text rule only for answers "
            "up to twice the options' text; CountBenchQA as a fraction"),
    RuleSet("vlmevalkit-2025.09.12", "VLMEvalKit", "9cc14cd0", "2025-09-12", 4, True, False, True,
            "matcher of vlmevalkit-2025.09; CountBenchQA x100"),
    RuleSet("vlmevalkit-2026.06", "VLMEvalKit", "a67ace50", "2026-06-17", 4, True, True, True,
            "matcher of vlmevalkit-2025.09 plus the 'answer is **B**' pattern; CountBenchQA x100"),
)}
DEFAULT_RULES = "vlmevalkit-2025.09"


def get_rules(rules: Union[str, RuleSet, None] = None) -> RuleSet:
    """The rule set named ``rules`` (a `RuleSet` is returned as is; None: `DEFAULT_RULES`).

    Raises KeyError naming the known rule sets for an unknown name.
    """
    if isinstance(rules, RuleSet):
        return rules
    name = DEFAULT_RULES if rules is None else rules
    if name not in RULE_SETS:
        raise KeyError(f"unknown rule set {name!r}; one of {', '.join(RULE_SETS)}")
    return RULE_SETS[name]
