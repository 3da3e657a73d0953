"""Counted, logged skipping of bad training records.

A long run must never die on one bad sample, and nothing may vanish without a count. Every
transform that can reject a record raises :class:`BadRecordError` (record id + reason + detail);
the pipeline turns it into a marker element, and the main-process batching stage hands the marker
to :class:`BadRecordStats`, which

* counts it per reason (totals and the current epoch),
* logs a warning naming the record id (the first ``max_logged_per_reason`` per reason at WARNING,
  the rest at DEBUG so a pathological file cannot flood the log),
* logs a per-epoch summary when the epoch rolls over (:meth:`BadRecordStats.end_epoch`),
* exposes the totals as scalar metrics (:meth:`BadRecordStats.as_metrics`), and
* round-trips through the checkpointed iterator state (:meth:`get_state` / :meth:`set_state`), and
* stops the run (:class:`TooManyBadRecords`, raised in the main process) when more than
  ``max_ratio`` of the last ``window`` records read were bad, or when a whole pass over the data
  (``window`` = the epoch's length at most) and one record more gave no good record, so a wrong image root can never
  make a repeating dataset spin forever. The message names the reasons, example records with
  their details, the data files and what to fix.

With ``on_bad_record="raise"`` the pipeline re-raises the error (the message names the record id) instead.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

logger = logging.getLogger("vlm_spatial.data")

# Every reason the data code may report, with a one-line meaning (documentation and metric keys).
REASONS: dict[str, str] = {
    "missing_image": "the record names an image file that does not exist",
    "corrupt_image": "the image file exists but cannot be decoded",
    "no_conversations": "the record has no (or an empty / malformed) 'conversations' list",
    "marker_without_image": "an <image> marker appears but the record has no image",
    "image_without_marker": "the record has an image but no <image> marker in a human turn",
    "multiple_image_markers": "more than one <image> marker (one image per record is supported)",
    "multiple_images": "the record lists several images (one image per record is supported)",
    "unknown_role": "a turn's 'from' is neither 'human' nor 'gpt'",
    "bad_turn_order": "turns do not alternate human/gpt, or the template needs another shape",
    "too_long": "the image slots do not fit in max_len (truncation would cut through them)",
    "no_labels": "after truncation no assistant token is left to train on",
    "malformed_record": "the record is not valid UTF-8 JSON, not an object, or a field has the wrong type",
    "image_outside_root": "the image path is absolute or uses '..' to leave the image root",
}

# What to fix, per reason (the stop message of TooManyBadRecords shows it).
FIXES: dict[str, str] = {
    "missing_image": "check the image root (stages.<stage>.image_root): the records' image paths are "
                     "relative to it, so every image is missing when it points at the wrong folder",
    "corrupt_image": "re-download or re-extract the named images",
    "image_outside_root": "put the images under the image root, or set data.allow_image_paths_outside_root=True "
                          "if those paths are meant",
    "malformed_record": "fix the named records of the data file (the detail gives the byte offset)",
    "too_long": "raise data.max_len, or drop the named records",
    "no_labels": "raise data.max_len, or drop the named records",
}
DEFAULT_FIX = ("check the named records against the LLaVA format (alternating human/gpt turns, one <image> "
               "marker in a human turn when the record has an image) and the stage's template")
# Records over which the bad-record ratio is measured (at most one epoch's worth).
RATIO_WINDOW = 1000


class BadRecordError(ValueError):
    """A record that cannot be turned into a training example.

    Attributes: ``record_id`` (str), ``reason`` (a key of :data:`REASONS`), ``detail`` (str).
    """

    def __init__(self, record_id: Any, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-record reason {reason!r}")
        self.record_id = str(record_id)
        self.reason = reason
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"bad record id={self.record_id!r} reason={self.reason}{tail}"

    def to_marker(self, epoch: int = 0) -> dict:
        """The element the pipeline carries in place of the example (picklable, tiny)."""
        return {"_bad": self.reason, "_id": self.record_id, "_detail": self.detail, "_epoch": epoch}

    @classmethod
    def from_marker(cls, marker: dict) -> "BadRecordError":
        return cls(marker["_id"], marker["_bad"], marker.get("_detail", ""))


class TooManyBadRecords(RuntimeError):
    """Too many of the records read were bad (see the module docstring); the message says which,
    why, and what to fix."""


def is_bad_marker(element: Any) -> bool:
    """True for the marker a rejected record becomes in the pipeline (see ``to_marker``)."""
    return isinstance(element, dict) and "_bad" in element


@dataclasses.dataclass
class BadRecordStats:
    """Counters of skipped records. Lives in the main process (the batching stage).

    ``total[reason]`` counts over the whole run (restored from checkpoints), ``epoch[reason]``
    over the current epoch, ``examples[reason]`` keeps the first few record ids per reason.
    ``max_ratio`` (None: no limit) and ``window`` set when :meth:`seen` stops the run;
    ``source`` names the data files in that message.
    """

    max_logged_per_reason: int = 20
    max_examples: int = 5
    max_ratio: float | None = None
    window: int = RATIO_WINDOW
    source: str = ""
    total: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    epoch: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)
    current_epoch: int = 0
    _recent: collections.deque = dataclasses.field(default_factory=collections.deque, repr=False)
    _recent_bad: int = 0
    _bad_in_a_row: int = 0
    _details: dict = dataclasses.field(default_factory=dict, repr=False)

    def record(self, err: BadRecordError) -> None:
        """Counts one skipped record and logs a message that names its id."""
        self.total[err.reason] += 1
        self.epoch[err.reason] += 1
        ids = self.examples.setdefault(err.reason, [])
        if len(ids) < self.max_examples:
            ids.append(err.record_id)
        details = self._details.setdefault(err.reason, [])
        if len(details) < 3:
            details.append(err.message)
        level = logging.WARNING if self.total[err.reason] <= self.max_logged_per_reason else logging.DEBUG
        logger.log(level, "skipping %s (skipped so far for this reason: %d)", err.message,
                   self.total[err.reason])

    def seen(self, bad: bool) -> None:
        """Notes one record read (``bad``: it was skipped) and raises :class:`TooManyBadRecords`
        when the last ``window`` records hold more than ``max_ratio`` bad ones, or when more than
        ``window`` records in a row were bad (whatever ``max_ratio``: a repeating pass over the
        data gave nothing; a single finite pass that is all bad still ends normally)."""
        self._recent.append(bad)
        self._recent_bad += bad
        if len(self._recent) > self.window:
            self._recent_bad -= self._recent.popleft()
        self._bad_in_a_row = self._bad_in_a_row + 1 if bad else 0
        full = len(self._recent) == self.window
        over = self.max_ratio is not None and self._recent_bad > self.max_ratio * self.window
        if full and (over or self._bad_in_a_row > self.window):
            raise TooManyBadRecords(self.stop_message())

    def stop_message(self) -> str:
        """Why the run stops: the bad share of the window, per reason the count, example records
        with details and what to fix, and the data files."""
        limit = (f"above data.max_bad_record_ratio={self.max_ratio:g}" if self.max_ratio is not None
                 else "no good record in a whole pass")
        lines = [f"too many bad records: {self._recent_bad} of the last {len(self._recent)} records read are bad "
                 f"({100 * self._recent_bad / max(1, len(self._recent)):.1f}%), {limit}; stopping. {self.source}"]
        for reason, n in sorted(self.total.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason}: {n} skipped so far ({REASONS[reason]}), e.g.")
            lines += [f"    {d}" for d in self._details.get(reason, [])]
            lines.append(f"    fix: {FIXES.get(reason, DEFAULT_FIX)}")
        lines.append("  (if these records are expected, raise data.max_bad_record_ratio; it must stay below 1)")
        return "\n".join(lines)

    @property
    def num_skipped(self) -> int:
        return sum(self.total.values())

    def summary(self, counts: collections.Counter | None = None) -> str:
        """One line: how many records were skipped per reason, with example ids (default: totals)."""
        counts = self.total if counts is None else counts
        if not sum(counts.values()):
            return "no records skipped"
        parts = [f"{r}={n} (e.g. ids {self.examples.get(r, [])})" for r, n in sorted(counts.items()) if n]
        return f"skipped {sum(counts.values())} records: " + ", ".join(parts)

    def end_epoch(self, new_epoch: int) -> str:
        """Logs the summary of the finished epoch and starts counting ``new_epoch``."""
        msg = f"data epoch {self.current_epoch} done: {self.summary(self.epoch)}"
        logger.info(msg)
        self.epoch = collections.Counter()
        self.current_epoch = new_epoch
        return msg

    def as_metrics(self, prefix: str = "data/skipped/") -> dict[str, int]:
        """Scalar metrics for the trainer: one key per reason (all reasons, zeros included) + total."""
        out = {prefix + r: int(self.total.get(r, 0)) for r in REASONS}
        out[prefix + "total"] = self.num_skipped
        return out

    def get_state(self) -> dict:
        """The counters as a JSON-serialisable dict (saved with the data iterator's state)."""
        return {"total": dict(self.total), "epoch": dict(self.epoch), "examples": dict(self.examples),
                "current_epoch": self.current_epoch}

    def set_state(self, state: dict) -> None:
        """Restores the counters saved by :meth:`get_state`."""
        self.total = collections.Counter(state.get("total", {}))
        self.epoch = collections.Counter(state.get("epoch", {}))
        self.examples = {k: list(v) for k, v in state.get("examples", {}).items()}
        self.current_epoch = int(state.get("current_epoch", 0))
