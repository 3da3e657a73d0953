"""The grain training pipeline: batch contract, buckets, host shards, bad records, exact resume."""
import json
import logging
import os
import time

import grain
import numpy as np
import pytest
from PIL import Image

from vlm_spatial.data import synthetic
from vlm_spatial.data.bad_records import REASONS, BadRecordError
from vlm_spatial.data.pipeline import build_train_pipeline, host_shard
from vlm_spatial.data.templates import VICUNA_SYSTEM

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
FILES = {name: os.path.join(FIXTURES, name) for name in
         ("blip_laion_cc_sbu_558k_sample.json", "llava_v1_5_mix665k_sample.json", "bad_records.jsonl")}
N_SLOTS = 4
IMG = 500


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl") else json.load(f)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """Image root with a small JPEG at every image path of the fixtures (one corrupt file), and a
    word-level tokenizer over their text."""
    root = tmp_path_factory.mktemp("llava")
    texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"]
    rng = np.random.default_rng(0)
    for name in ("blip_laion_cc_sbu_558k_sample.json", "llava_v1_5_mix665k_sample.json"):
        for r in _read(FILES[name]):
            texts += [t["value"] for t in r["conversations"]]
            if "image" in r:
                os.makedirs(root / os.path.dirname(r["image"]), exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / r["image"])
    os.makedirs(root / "coco/train2017", exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "coco/train2017/000000000009.jpg")
    (root / "coco/train2017/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    texts.append("What is on the plate? Broccoli and bread.")
    synthetic.train_tokenizer(texts, str(root / "tokenizer"))
    return root


def _pipeline(root, files, **kw):
    args = dict(data_files=[FILES[f] for f in files], image_roots=str(root), tokenizer_dir=str(root / "tokenizer"),
                template="vicuna_v1", max_len=96, bucket_lengths=[64, 80], global_batch_size=2, seed=0,
                num_image_tokens=N_SLOTS, image_token_id=IMG, image={"encoder": "clip", "image_size": 16},
                num_epochs=1, shard_index=0, shard_count=1, drop_remainder=False, read_threads=1)
    args.update(kw)
    return build_train_pipeline(**args)


def test_batches_follow_the_contract(llava_dir):
    """558K + 665K fixtures together: shapes, dtypes, buckets, masks, slots, text-only rows."""
    with _pipeline(llava_dir, ["blip_laion_cc_sbu_558k_sample.json", "llava_v1_5_mix665k_sample.json"],
                   bucket_lengths=[16, 64, 80], template="vicuna_v1") as it:
        batches = list(it)
    assert len(batches) == 4 and sum(len(b["input_ids"]) for b in batches) == 7
    for b in batches:
        B, T = b["input_ids"].shape
        assert T in (16, 64, 80, 96) and b["attention_mask"].sum(1).max() > {16: 0, 64: 16, 80: 64, 96: 80}[T]
        assert b["input_ids"].dtype == b["labels"].dtype == b["attention_mask"].dtype == np.int32
        assert b["pixel_values"].shape == (B, 16, 16, 3) and b["pixel_values"].dtype == np.float32
        for i in range(B):
            n = b["attention_mask"][i].sum()
            assert (b["attention_mask"][i, :n] == 1).all() and (b["labels"][i, n:] == -100).all()
            slots = np.flatnonzero(b["input_ids"][i] == IMG)
            has_image = np.abs(b["pixel_values"][i]).sum() > 0
            assert len(slots) == (N_SLOTS if has_image else 0)
            if has_image:  # contiguous, right after "<s> SYSTEM USER :"
                assert slots.tolist() == list(range(32, 32 + N_SLOTS))
            assert (b["labels"][i][slots] == -100).all() and (b["labels"][i] != -100).any()


def test_naflex_batches(llava_dir):
    """SigLIP2-NaFlex: patches, mask and grid per row; a text-only row gets a valid all-zero grid."""
    with _pipeline(llava_dir, ["llava_v1_5_mix665k_sample.json"], global_batch_size=4, max_len=128,
                   image={"encoder": "siglip2", "naflex": True, "patch_size": 8, "max_num_patches": 16}) as it:
        (b,) = list(it)
    assert b["pixel_values"].shape == (4, 16, 8 * 8 * 3) and b["pixel_attention_mask"].shape == (4, 16)
    text_only = (b["input_ids"] == IMG).sum(1) == 0
    assert text_only.sum() == 1
    # 30x40 JPEGs keep their 3:4 aspect: 3x4 patches of 8 px; the text-only row a zero 4x4 grid
    assert b["spatial_shapes"][~text_only].tolist() == [[3, 4]] * 3
    assert b["spatial_shapes"][text_only].tolist() == [[4, 4]]
    np.testing.assert_array_equal(b["pixel_attention_mask"].sum(1), np.where(text_only, 16, 12))
    assert not b["pixel_values"][text_only].any()


def test_bad_records_are_counted_and_named(llava_dir, caplog):
    bad_ids = {"bad_missing_image": "missing_image", "bad_corrupt_image": "corrupt_image",
               "bad_no_conversations": "no_conversations", "bad_marker_without_image": "marker_without_image",
               "bad_image_without_marker": "image_without_marker", "bad_unknown_role": "unknown_role",
               "bad_records.jsonl#7": "malformed_record"}
    with caplog.at_level(logging.INFO, logger="vlm_spatial.data"):
        with _pipeline(llava_dir, ["bad_records.jsonl"], global_batch_size=1) as it:
            rows = list(it)
            metrics = it.bad_records.as_metrics()
    assert len(rows) == 2  # good_image, good_text_only
    expected = {f"data/skipped/{r}": 0 for r in REASONS}
    for reason in bad_ids.values():
        expected[f"data/skipped/{reason}"] = 1
    assert metrics == {**expected, "data/skipped/total": 7}
    messages = [r.getMessage() for r in caplog.records]
    for rid, reason in bad_ids.items():
        assert any(f"id={rid!r} reason={reason}" in m for m in messages), (rid, messages)
    summary = [m for m in messages if m.startswith("data epoch 0 done: skipped 7 records")]
    assert len(summary) == 1 and "unknown_role=1 (e.g. ids ['bad_unknown_role'])" in summary[0]


def test_bad_record_policy_raise_names_the_record(llava_dir):
    with _pipeline(llava_dir, ["bad_records.jsonl"], global_batch_size=1, on_bad_record="raise") as it:
        with pytest.raises(BadRecordError) as err:
            list(it)
    rid, reason = err.value.record_id, err.value.reason
    assert f"bad record id={rid!r} reason={reason}" in str(err.value)
    assert rid == "bad_records.jsonl#7" or rid == f"bad_{reason}"
    with pytest.raises(ValueError, match="on_bad_record"):
        _pipeline(llava_dir, ["bad_records.jsonl"], on_bad_record="ignore")


def test_records_that_cannot_fit_are_dropped_and_counted(llava_dir, caplog):
    """The 665K fixture's first answers start at token 48 (COCO), 52 (GQA), 50 (text-only) and 42
    (OCR-VQA); the image slots end at 1 + 29 + 2 + 4 = 36. Records that cannot keep their slots
    whole (too_long) or a single answer token (no_labels) are dropped and counted."""
    cases = ((35, {"000000033471": "too_long", "2354786": "too_long", "71lMffUzNt8": "too_long",
                   "i6IyJda_0": "no_labels"}),
             (50, {"2354786": "no_labels", "i6IyJda_0": "no_labels"}))
    for max_len, dropped in cases:
        caplog.clear()
        with _pipeline(llava_dir, ["llava_v1_5_mix665k_sample.json"], max_len=max_len, bucket_lengths=[],
                       global_batch_size=1) as it:
            rows = list(it)
            assert it.bad_records.num_skipped == len(dropped)
        assert len(rows) == 4 - len(dropped) and all(r["input_ids"].shape == (1, max_len) for r in rows)
        for rid, reason in dropped.items():
            assert any(f"id={rid!r} reason={reason}: " in r.getMessage() for r in caplog.records)


def test_host_shards_are_disjoint_and_equal():
    ds = grain.MapDataset.range(11)
    shards = [list(host_shard(ds, i, 3)) for i in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(d, num_train=20, num_val=2, num_test=2, seed=1, questions_per_image=2)
    return d


def _synth_pipeline(d, num_workers, host=(0, 1)):
    return build_train_pipeline(synthetic_dir=d, template="vicuna_v1", max_len=128, bucket_lengths=[64, 96],
                                global_batch_size=6, seed=7, num_epochs=3, num_workers=num_workers,
                                num_image_tokens=4, image_token_id=93, image={"encoder": "siglip", "image_size": 32},
                                shard_index=host[0], shard_count=host[1], read_threads=2)


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_restored_iterator_yields_exactly_the_uninterrupted_batches(synth_dir):
    """Shuffled, 3 epochs (10 batches of 6 from 20 records): stop mid-epoch 0 (2 batches) with 2
    worker processes, or in epoch 2 (7 batches) in-process, save the state as JSON, restore into a
    fresh pipeline and continue. Worker processes do not change the stream."""
    with _synth_pipeline(synth_dir, 0) as it:
        ref = list(it)
    assert len(ref) == 10
    first_epoch = np.concatenate([b["pixel_values"] for b in ref[:3]])
    assert len({r.tobytes() for r in first_epoch}) == 18  # no image twice within the epoch
    with _synth_pipeline(synth_dir, 2) as it:
        head = [next(it) for _ in range(2)]
        state = json.loads(json.dumps(it.get_state()))
    with _synth_pipeline(synth_dir, 2) as it:
        it.set_state(state)
        tail = list(it)
    _assert_same(head + tail, ref)
    with _synth_pipeline(synth_dir, 0) as it, pytest.raises(ValueError, match="num_workers=2; this pipeline has num_workers=0"):
        it.set_state(state)
    with _synth_pipeline(synth_dir, 0) as it:
        for _ in range(7):
            next(it)
        state = it.get_state()
    with _synth_pipeline(synth_dir, 0) as it:
        it.set_state(state)
        _assert_same(list(it), ref[7:])


def test_each_host_reads_its_own_shard(synth_dir):
    seen = []
    for host in range(2):
        with _synth_pipeline(synth_dir, 0, host=(host, 2)) as it:
            batches = list(it)
        assert len(batches) == 10 and all(len(b["input_ids"]) == 3 for b in batches)
        seen.append({r.tobytes() for b in batches[:3] for r in b["pixel_values"]})
    assert len(seen[0]) == len(seen[1]) == 9 and not seen[0] & seen[1]


def _record(rid, image):
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat is on the plate?"},
                                                         {"from": "gpt", "value": "Broccoli and bread."}]}


def test_image_paths_outside_the_root_are_refused_unless_allowed(llava_dir, tmp_path, caplog):
    outside = llava_dir.parent / "outside.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    records = [_record("inside", "coco/../coco/train2017/000000000009.jpg"),  # '..' that stays inside
               _record("dotdot", "../outside.jpg"), _record("absolute", str(outside))]
    path = tmp_path / "paths.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    FILES["paths.jsonl"] = str(path)
    with caplog.at_level(logging.WARNING, logger="vlm_spatial.data"):
        with _pipeline(llava_dir, ["paths.jsonl"], global_batch_size=1) as it:
            assert len(list(it)) == 1
            assert it.bad_records.total == {"image_outside_root": 2}
    messages = [r.getMessage() for r in caplog.records]
    for rid, image in (("dotdot", "../outside.jpg"), ("absolute", str(outside))):
        assert any(f"id={rid!r} reason=image_outside_root: image {image!r} resolves to {outside}, outside the "
                   f"image root {llava_dir} (data.allow_image_paths_outside_root=True reads it)" in m
                   for m in messages), (rid, messages)
    with _pipeline(llava_dir, ["paths.jsonl"], global_batch_size=1, allow_image_paths_outside_root=True) as it:
        rows = list(it)
        assert len(rows) == 3 and it.bad_records.num_skipped == 0
    np.testing.assert_array_equal(rows[1]["pixel_values"], rows[2]["pixel_values"])  # both read outside.jpg


def test_too_many_bad_records_stop_in_the_main_process_and_name_what_to_fix(llava_dir, tmp_path):
    """A wrong image root makes every record bad: a repeating pipeline (worker processes too)
    stops after one pass with the reasons, example records, the files and the fix. A bad share
    under the limit, as one bad record at the start, trains on."""
    from vlm_spatial.data.bad_records import TooManyBadRecords

    for num_workers in (0, 2):
        t0 = time.time()
        with _pipeline(tmp_path / "wrong_root", ["blip_laion_cc_sbu_558k_sample.json"], global_batch_size=1,
                       num_epochs=None, tokenizer_dir=str(llava_dir / "tokenizer"), template="plain",
                       num_workers=num_workers) as it:
            with pytest.raises(TooManyBadRecords) as err:
                next(it)
        assert time.time() - t0 < 60
        msg = str(err.value)
        data = FILES["blip_laion_cc_sbu_558k_sample.json"]
        assert msg.startswith("too many bad records: 3 of the last 3 records read are bad (100.0%), no good record "
                              f"in a whole pass; stopping. Data: LlavaJsonSource(files=['{data}'], "
                              f"image_roots=['{tmp_path / 'wrong_root'}'], len=3)."), msg
        assert ("  missing_image: 4 skipped so far (the record names an image file that does not exist), e.g.\n"
                f"    bad record id='004539375' reason=missing_image: no file {tmp_path / 'wrong_root'}/00453/004539375.jpg"
                in msg), msg
        assert "    fix: check the image root (stages.<stage>.image_root): the records' image paths are relative" in msg
    records = [_record("bad_first", "coco/train2017/missing.jpg")] + [
        _record(f"good{i}", "coco/train2017/000000000009.jpg") for i in range(11)]
    path = tmp_path / "one_bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    FILES["one_bad.jsonl"] = str(path)
    with _pipeline(llava_dir, ["one_bad.jsonl"], global_batch_size=1, num_epochs=3, max_bad_record_ratio=0.1) as it:
        assert len(list(it)) == 33 and it.bad_records.num_skipped == 3  # 1 of 12 < 10%
    with _pipeline(llava_dir, ["one_bad.jsonl"], global_batch_size=1, num_epochs=3, max_bad_record_ratio=0.05) as it:
        with pytest.raises(TooManyBadRecords, match=r"1 of the last 12 records read are bad \(8.3%\), above "
                                                    r"data.max_bad_record_ratio=0.05; stopping"):
            list(it)


def test_a_stop_request_interrupts_the_wait_for_data_at_the_batch_boundary(synth_dir):
    """`set_stop_check(fn)`: `next` raises DataWaitInterrupted once fn() is true, and the iterator
    is back where the batch began, so a checkpoint taken then resumes the exact stream."""
    from vlm_spatial.data.pipeline import DataWaitInterrupted

    with _synth_pipeline(synth_dir, 0) as it:
        ref = list(it)
    with _synth_pipeline(synth_dir, 0) as it:
        first = next(it)
        polls = []
        it.set_stop_check(lambda: len(polls) > 3 or polls.append(1))  # true after 3 records of the batch
        with pytest.raises(DataWaitInterrupted):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
    with _synth_pipeline(synth_dir, 0) as it:
        it.set_state(state)
        _assert_same([first] + list(it), ref)
