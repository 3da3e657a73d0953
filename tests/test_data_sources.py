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
