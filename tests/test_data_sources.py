"""LlavaJsonSource: random access over LLaVA JSON / JSONL files equals a full json.load."""
import json
import pickle

import pytest

from vlm_spatial.data.sources import LlavaJsonSource

RECORDS = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\nWhat is written on the café sign, ü?"},
                       {"from": "gpt", "value": "“Le Petit” — 小さな café 🚌, with a \"quote\" and a \\ backslash."}]},
    {"id": 17, "conversations": [{"from": "human", "value": "Text only [not, an] {array}"},
                                 {"from": "gpt", "value": "ok ]"}]},
    {"id": "2354786", "image": "gqa/images/2354786.jpg",
     "conversations": [{"from": "human", "value": "Is the sky dark?\n<image>"}, {"from": "gpt", "value": "Yes"}]},
]


def test_random_access_matches_json_load(tmp_path):
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS, indent=2, ensure_ascii=False).encode())  # BOM
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(RECORDS, separators=(",", ":")))
    lines = tmp_path / "records.jsonl"
    lines.write_bytes(b"\r\n".join(json.dumps(r, ensure_ascii=False).encode() for r in RECORDS) + b"\r\n\r\n")
    src = LlavaJsonSource([pretty, compact, lines], ["/imgs/a", None, "/imgs/c"])
    assert len(src) == 9
    for i in (8, 0, 4, 2, 6, 1, 7, 3, 5):  # any order
        el = src[i]
        assert el["record"] == RECORDS[i % 3] and el["index"] == i
        assert el["image_root"] == ["/imgs/a", None, "/imgs/c"][i // 3]
    clone = pickle.loads(pickle.dumps(src))  # what a worker process gets
    assert clone[5]["record"] == RECORDS[2] and src[-1]["record"] == RECORDS[2]


def test_malformed_records(tmp_path):
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"id": "a", "conversations": []}\n{"id": "b", "conv\n[1, 2]\n')
    src = LlavaJsonSource(lines)
    assert src[0]["record"] == {"id": "a", "conversations": []}
    assert src[1]["record"] is None and "line 1 column 18" in src[1]["error"]
    assert src[2]["record"] is None and "not an object" in src[2]["error"]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a"}, {"id": "b",]')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON in record 1"):
        LlavaJsonSource(broken)
    with pytest.raises(ValueError, match="one top-level array"):
        (tmp_path / "obj.json").write_text('{"id": "a"}')
        LlavaJsonSource(tmp_path / "obj.json")


def test_a_byte_that_is_not_utf8_names_the_file_record_and_offset(tmp_path):
    """One non-UTF-8 byte inside a record's text spoils that record only (index and offset named);
    one in the array's structure fails at start naming the file, the record and the byte."""
    good = [json.dumps(r, ensure_ascii=False).encode() for r in RECORDS]
    bad = good[1].replace(b"Text only", b"Text \xff only")
    data = b"[" + b",\n ".join([good[0], bad, good[2]]) + b"]"
    (tmp_path / "one_bad_byte.json").write_bytes(data)
    (tmp_path / "one_bad_byte.jsonl").write_bytes(b"\n".join([good[0], bad, good[2]]) + b"\n")
    for name in ("one_bad_byte.json", "one_bad_byte.jsonl"):
        src = LlavaJsonSource(tmp_path / name)
        assert len(src) == 3 and src[0]["record"] == RECORDS[0] and src[2]["record"] == RECORDS[2]
        raw = (tmp_path / name).read_bytes()
        start, offset = raw.index(bad), raw.index(b"\xff")
        assert src[1]["record"] is None
        assert src[1]["error"] == (f"{tmp_path / name}: record 1 (byte {start}): byte {offset} (0xff) is not UTF-8; "
                                   "re-encode the file as UTF-8")
    # the record index counts within its own file when several files are read together
    both = LlavaJsonSource([tmp_path / "one_bad_byte.jsonl", tmp_path / "one_bad_byte.json"])
    assert both[4]["record"] is None and both[4]["error"].startswith(f"{tmp_path / 'one_bad_byte.json'}: record 1 ")
    structure = data.replace(b",\n ", b",\xff ", 1)
    (tmp_path / "broken_structure.json").write_bytes(structure)
    with pytest.raises(ValueError) as err:
        LlavaJsonSource(tmp_path / "broken_structure.json")
    msg, at = str(err.value), structure.index(b"\xff")
    assert msg.startswith(f"{tmp_path / 'broken_structure.json'}: invalid JSON in record 1 "
                          f"(starting at byte {len(good[0]) + 2}; error at byte {at})"), msg
