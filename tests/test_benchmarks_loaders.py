"""Benchmark loaders read the published formats: the real rows in tests/fixtures/benchmarks
(copied unchanged from the benchmarks' repositories, see SAMPLES_README.md) and hand-written
files in the published layouts (VLMEvalKit TSV with base64 PNGs, HF parquet, official JSON)."""
import base64
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_spatial.evaluation.benchmarks import BenchmarkFileMissing, get_benchmark, list_benchmarks
from vlm_spatial.evaluation.benchmarks.answer_parsing import LLAVA_MCQ_SUFFIX, LLAVA_MCQ_SUFFIX_CN
from vlm_spatial.evaluation.benchmarks.base import Sample, read_jsonl, read_vlmevalkit_tsv
from vlm_spatial.evaluation.benchmarks.vsr import VSR_TEMPLATE, vsr_sample

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmark_samples"


def png_b64(color, size=(4, 3)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """A TSV as VLMEvalKit writes them (pandas to_csv(sep='\\t'): header, minimal quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in cols])
    return path


def place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


# --------------------------------------------------------------------------- provenance
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/benchmark_samples not beside this checkout")
def test_fixtures_are_unchanged_copies_of_every_shared_sample():
    shared = sorted(p.name for p in SHARED.iterdir() if p.name != "README.md")
    for name in shared:
        assert (FIX / name).read_bytes() == (SHARED / name).read_bytes(), name
    assert (FIX / "SAMPLES_README.md").read_text() == (SHARED / "README.md").read_text()


# --------------------------------------------------------------------------- VLMEvalKit TSV
def test_vlmevalkit_tsv_images_references_lists_and_na_cells(tmp_path):
    red, blue = png_b64((255, 0, 0)), png_b64((0, 0, 255))
    path = write_tsv(tmp_path / "X.tsv", [
        {"index": 0, "image": red, "question": "q0", "A": "yes", "B": "None", "answer": "A"},
        {"index": 1, "image": "0", "question": "q1", "A": "NA", "B": "b", "answer": "B"},
        {"index": 2, "image": json.dumps([blue, red]).replace('"', "'"), "question": "q2",
         "A": "a", "B": "", "answer": "A"}])
    rows = read_vlmevalkit_tsv(path)
    assert rows[1]["image"] == red                      # short cell = another row's index
    assert rows[2]["image"] == [blue, red]              # multi-image list
    assert rows[0]["B"] is None and rows[1]["A"] is None and rows[2]["B"] is None  # pandas NaN
    first = Sample(qid="2", prompt="", gold=None, image=rows[2]["image"], image_kind="base64")
    img = np.asarray(first.load_image())                # a multi-image row gives its first image
    assert img.shape == (3, 4, 3) and tuple(img[0, 0]) == (0, 0, 255)


def test_every_benchmark_names_its_missing_file_and_where_it_is_published(tmp_path):
    for name in list_benchmarks():
        bench = get_benchmark(name)
        with pytest.raises(BenchmarkFileMissing) as e:
            bench.load(tmp_path)
        msg = str(e.value)
        assert bench.title in msg and "Expected one of" in msg and "Published at" in msg, msg
        assert all(f in msg for f in bench.expected_files)


# --------------------------------------------------------------------------- shared real rows
def test_mmvp_questions_csv(tmp_path):
    place(FIX / "mmvp_Questions_partial.csv", tmp_path / "mmvp" / "Questions.csv")
    samples = get_benchmark("mmvp").load(tmp_path)
    assert [s.qid for s in samples] == ["1", "2", "4", "5", "6", "279", "280", "300"]
    s = samples[0]
    assert s.prompt == ("Are the butterfly's wings closer to being open or closed?\nA. Open\nB. Closed"
                        + LLAVA_MCQ_SUFFIX)
    assert [x.gold for x in samples] == ["A", "B", "B", "A", "B", "A", "B", "B"]
    assert samples[-1].choices == {"A": "Light shining through the clouds from the upper right corner",
                                   "B": "Most of the background is dark and cloudy"}
    assert s.image.endswith("MMVP Images/1.jpg") and s.meta["number"] == 1


def test_mmvp_tsv_numbers_questions_from_the_first_index(tmp_path):
    rows = [{"index": i, "image": png_b64((i, 0, 0)), "question": "Open or closed?", "A": "Open",
             "B": "Closed", "answer": "AB"[i % 2]} for i in range(4)]
    write_tsv(tmp_path / "MMVP.tsv", rows)
    samples = get_benchmark("mmvp").load(tmp_path)
    assert [s.meta["number"] for s in samples] == [1, 2, 3, 4]
    assert samples[1].gold == "B" and samples[1].load_image().getpixel((0, 0)) == (1, 0, 0)


def test_cvbench_hf_jsonl_row(tmp_path):
    place(FIX / "cvbench_row_from_docstring.jsonl", tmp_path / "cvbench" / "test_2d.jsonl")
    (s,) = get_benchmark("cvbench").load(tmp_path)
    assert s.qid == "2D_0" and s.gold == "C"
    assert s.prompt == "How many organs are in the image?\nA. 3\nB. 2\nC. 1\nD. 0" + LLAVA_MCQ_SUFFIX
    assert s.meta == {"source": "ADE20K", "split": "2D", "task": "Count"}
    assert s.image == str(tmp_path / "cvbench" / "img/2D/count/ade20k_10.png")
    (o,) = get_benchmark("cvbench", prompt_style="official").load(tmp_path)
    assert o.prompt.startswith("How many organs are in the image? Select from the following choices.\n(A) 3")


def test_cvbench_vlmevalkit_tsvs(tmp_path):
    img = png_b64((0, 255, 0))
    write_tsv(tmp_path / "CV-Bench-2D.tsv", [
        {"index": 0, "image": img, "question": "How many cars?", "A": "1", "B": "2", "answer": "(B)",
         "prompt": "How many cars? ...", "source": "COCO", "split": "2D", "task": "Count"}])
    write_tsv(tmp_path / "CV-Bench-3D.tsv", [
        {"index": 0, "image": img, "question": "Which is closer?", "A": "cup", "B": "box",
         "answer": "A", "source": "Omni3D", "split": "3D", "task": "Depth"}])
    samples = get_benchmark("cvbench").load(tmp_path)
    assert [(s.qid, s.gold, s.meta["source"]) for s in samples] == [("2D_0", "B", "COCO"),
                                                                      ("3D_0", "A", "Omni3D")]


def test_tallyqa_official_json_and_tsv(tmp_path):
    place(FIX / "tallyqa_readme_example.json", tmp_path / "tallyqa" / "test.json")
    (s,) = get_benchmark("tallyqa").load(tmp_path)
    assert (s.qid, s.gold, s.meta["issimple"]) == ("30095774", 4, False)
    assert s.prompt == ("How many headlights does the black bus have?\n"
                        "Answer the question using a single number.")
    assert s.image == str(tmp_path / "tallyqa" / "VG_100K_2/2410408.jpg")
    write_tsv(tmp_path / "t2" / "tallyqa" / "TallyQA.tsv", [
        {"index": 7, "image": png_b64((1, 2, 3)), "question": "How many dogs?", "answer": 2}])
    (t,) = get_benchmark("tallyqa").load(tmp_path / "t2")
    assert (t.qid, t.gold, t.meta["issimple"]) == ("7", 2, None)


def test_gqa_llava_questions_with_official_json(tmp_path):
    place(FIX / "gqa_llava_testdev_balanced_questions.jsonl",
          tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl")
    place(FIX / "gqa_testdev_balanced_questions_handmade_gold.json",
          tmp_path / "gqa" / "testdev_balanced_questions.json")
    samples = get_benchmark("gqa").load(tmp_path)
    assert len(samples) == 50
    s = samples[1]
    assert s.qid == "201640614" and s.prompt == ("Who is wearing the dress?\n"
                                                 "Answer the question using a single word or phrase.")
    assert s.image == str(tmp_path / "gqa" / "images" / "n235859.jpg")
    assert s.meta["structural"] == "query" and s.gold == "woman"


def test_gqa_vlmevalkit_tsv(tmp_path):
    write_tsv(tmp_path / "GQA_TestDev_Balanced.tsv", [
        {"index": 201307251, "image": png_b64((9, 9, 9)), "question": "Is it overcast?",
         "answer": "no", "category": "verify"}])
    (s,) = get_benchmark("gqa").load(tmp_path)
    assert s.prompt == "Is it overcast?\nAnswer the question using a single word or phrase."
    assert (s.gold, s.meta["structural"]) == ("no", "verify")


def test_vsr_zeroshot_and_random_split_rows(tmp_path):
    place(FIX / "vsr_zeroshot_test.jsonl", tmp_path / "vsr" / "data/splits/zeroshot/test.jsonl")
    (tmp_path / "vsr" / "images").mkdir()
    samples = get_benchmark("vsr").load(tmp_path)
    assert len(samples) == 50
    assert samples[0].prompt == VSR_TEMPLATE.format(caption="The car is behind the suitcase.")
    assert (samples[0].gold, samples[1].gold) == ("Yes", "No")
    assert samples[0].image == str(tmp_path / "vsr" / "images" / "000000017697.jpg")
    rows = read_jsonl(FIX / "vsr_random_test.jsonl")
    random_samples = [vsr_sample(i, r, tmp_path) for i, r in enumerate(rows)]
    assert len(random_samples) == 20
    assert [s.gold for s in random_samples[:2]] == ["Yes", "Yes"]
    assert random_samples[1].meta["relation"] == "consists of"


def test_mme_llava_questions_with_release_answers(tmp_path):
    place(FIX / "mme_llava_questions.jsonl", tmp_path / "mme" / "llava_mme.jsonl")
    place(FIX / "mme_release_handmade" / "MME_Benchmark_release_version",
          tmp_path / "mme" / "MME_Benchmark_release_version")
    samples = get_benchmark("mme").load(tmp_path)
    assert len(samples) == 56
    assert [s.qid for s in samples[:2]] == ["code_reasoning/0020.png", "code_reasoning/0020.png#1"]
    assert samples[0].prompt == "Is a python code shown in the picture? Please answer yes or no."
    assert [s.gold for s in samples[:2]] == ["Yes", "No"]
    assert samples[4].meta == {"category": "artwork", "image_key": "artwork/images/14777.jpg"}
    llava = get_benchmark("mme", prompt_style="llava").load(tmp_path)
    assert llava[0].prompt.endswith("\nAnswer the question using a single word or phrase.")


def test_mme_vlmevalkit_tsv_pairs_by_image_path(tmp_path):
    img = png_b64((5, 5, 5))
    write_tsv(tmp_path / "MME.tsv", [
        {"index": 0, "image": img, "question": "Is there a cat? Please answer yes or no.",
         "answer": "Yes", "category": "existence", "image_path": "existence/1.jpg"},
        {"index": 1, "image": "0", "question": "Is there a dog? Please answer yes or no.",
         "answer": "No", "category": "existence", "image_path": "existence/1.jpg"}])
    a, b = get_benchmark("mme").load(tmp_path)
    assert a.meta["image_key"] == b.meta["image_key"] == "existence/1.jpg"
    assert b.image == img


def test_ccbench_mmbench_repo_rows_get_circular_copies(tmp_path):
    place(FIX / "ccbench_mmbench_repo_samples.jsonl", tmp_path / "ccbench" / "ccbench_samples.jsonl")
    samples = get_benchmark("ccbench").load(tmp_path)
    assert len(samples) == 14 * 4
    r0, r1 = samples[0], samples[1]
    assert r0.choices == {"A": "天坛", "B": "故宫", "C": "黄鹤楼", "D": "少林寺"} and r0.gold == "A"
    assert r1.choices == {"A": "故宫", "B": "黄鹤楼", "C": "少林寺", "D": "天坛"} and r1.gold == "D"
    assert r0.prompt == "图中所示建筑名称为？\nA. 天坛\nB. 故宫\nC. 黄鹤楼\nD. 少林寺" + LLAVA_MCQ_SUFFIX_CN
    assert r0.image == str(tmp_path / "ccbench" / "CCBench/0.jpg")
    assert {s.meta["group"] for s in samples[:4]} == {0}


def test_ccbench_vlmevalkit_tsv_groups_copies_by_index(tmp_path):
    img = png_b64((1, 1, 1))
    write_tsv(tmp_path / "CCBench.tsv", [
        {"index": 3, "image": img, "question": "q", "A": "x", "B": "y", "answer": "A", "category": "c"},
        {"index": 1000003, "image": "3", "question": "q", "A": "y", "B": "x", "answer": "B",
         "category": "c"}])
    a, b = get_benchmark("ccbench").load(tmp_path)
    assert (a.meta["group"], b.meta["group"], a.meta["rotation"], b.meta["rotation"]) == (3, 3, 0, 1)


def test_seedbench_official_json_keeps_image_questions(tmp_path):
    place(FIX / "seedbench1_handmade_SEED-Bench.json", tmp_path / "seedbench" / "SEED-Bench.json")
    samples = get_benchmark("seedbench").load(tmp_path)
    assert len(samples) == 50 and samples[0].qid == "101669"
    assert samples[0].meta["category"] == "Scene Understanding"
    assert samples[0].image == str(tmp_path / "seedbench" / "SEED-Bench-image" / "handmade_101669.jpg")
    assert samples[0].prompt.endswith("\nD. option four" + LLAVA_MCQ_SUFFIX)


def test_countbenchqa_tsv_parquet_and_original_countbench_refused(tmp_path):
    write_tsv(tmp_path / "countbenchqa" / "CountBenchQA.tsv", [
        {"index": 0, "image": png_b64((2, 2, 2)), "question": "How many cats are there?", "answer": 3}])
    (s,) = get_benchmark("countbenchqa").load(tmp_path)
    assert s.gold == 3 and s.prompt == ("How many cats are there? Note that: answer with a number "
                                        "directly e.g. 3. Do not include any additional text.")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    png = base64.b64decode(png_b64((7, 8, 9)))
    table = pa.table({"image": [{"bytes": png, "path": None}], "text": ["three dogs"],
                      "question": ["How many dogs are in the image?"], "number": [3]})
    (tmp_path / "hf" / "countbenchqa" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "hf" / "countbenchqa" / "data" / "test-00000-of-00001.parquet")
    (h,) = get_benchmark("countbenchqa").load(tmp_path / "hf")
    assert h.gold == 3 and h.load_image().getpixel((0, 0)) == (7, 8, 9)
    orig = tmp_path / "orig" / "countbench" / "CountBench.json"
    orig.parent.mkdir(parents=True)
    orig.write_text(json.dumps([{"image_url": "http://x/1.jpg", "text": "two dogs", "number": 2}]))
    with pytest.raises(ValueError, match="no 'question' field"):
        get_benchmark("countbenchqa").load(tmp_path / "orig")


def test_mmmu_tsv_open_questions_and_hf_parquet(tmp_path):
    img = png_b64((3, 3, 3))
    write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", [
        {"index": 1, "image": img, "question": "<image 1> Price?", "A": "$6", "B": "$7",
         "answer": "B", "split": "validation", "category": "Accounting"},
        {"index": 2, "image": img, "question": "<image 1> Speed in m/s?", "answer": "1.06",
         "split": "validation", "category": "Architecture_and_Engineering"},
        {"index": 3, "image": img, "question": "dev row", "A": "x", "B": "y", "answer": "A",
         "split": "dev", "category": "Art"}])
    mc, op = get_benchmark("mmmu").load(tmp_path)
    assert mc.prompt == "<image 1> Price?\nA. $6\nB. $7" + LLAVA_MCQ_SUFFIX and mc.gold == "B"
    assert op.prompt == "<image 1> Speed in m/s?\nAnswer the question directly."   # gold not leaked
    assert op.choices == {"A": "1.06", "B": "Other Answers"} and op.gold == "A"
    assert len(get_benchmark("mmmu", split="all").load(tmp_path)) == 3
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    rows = {"id": ["validation_Accounting_1", "validation_Chemistry_20"],
            "question": ["Cost? <image 1>", "How many carbons?"],
            "options": ["['$6', '$7', '$8', '$9']", "[]"], "answer": ["B", "5"],
            "question_type": ["multiple-choice", "open"],
            "image_1": [{"bytes": base64.b64decode(img), "path": None}, None]}
    (tmp_path / "hf" / "Accounting").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "hf" / "Accounting" / "validation-00000-of-00001.parquet")
    a, b = get_benchmark("mmmu").load(tmp_path / "hf")
    assert a.choices == {"A": "$6", "B": "$7", "C": "$8", "D": "$9"} and a.gold == "B"
    assert a.meta["category"] == "Accounting" and a.load_image().size == (4, 3)
    assert b.meta["question_type"] == "open" and b.image is None
    off = get_benchmark("mmmu", prompt_style="official").load(tmp_path / "hf")
    assert off[0].prompt == ("Cost? <image 1>\n\n(A) $6\n(B) $7\n(C) $8\n(D) $9\n\n"
                             "Answer with the option's letter from the given choices directly.")


def test_topviewrs_tsv_and_hf_json(tmp_path):
    write_tsv(tmp_path / "TopViewRS.tsv", [
        {"index": 0, "image": png_b64((4, 4, 4)), "question": "Where is the sofa?", "A": "left",
         "B": "right", "answer": "B", "category": "Object Localization", "l2-category": "realistic"}])
    (s,) = get_benchmark("topviewrs").load(tmp_path)
    assert s.gold == "B" and s.meta == {"category": "Object Localization", "l2-category": "realistic"}
    j = tmp_path / "hf" / "released_realistic_datasets.json"
    j.parent.mkdir()
    j.write_text(json.dumps([{"id": 5, "question": "Which room?", "choices": ["kitchen", "bath"],
                              "answer": "bath", "image": "data/5.png", "sub_task": "Scene"}]))
    (h,) = get_benchmark("topviewrs").load(tmp_path / "hf")
    assert (h.qid, h.gold, h.meta["category"]) == ("released_realistic_datasets_5", "B", "Scene")


def test_cvbench_hf_parquet_with_embedded_images(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    png = base64.b64decode(png_b64((10, 20, 30)))
    row = json.loads((FIX / "cvbench_row_from_docstring.jsonl").read_text())
    table = pa.table({k: [v] for k, v in row.items() if k not in ("target_class", "target_size", "bbox")}
                     | {"image": [{"bytes": png, "path": "ade20k_10.png"}]})
    (tmp_path / "cvbench").mkdir()
    pq.write_table(table, tmp_path / "cvbench" / "test_2d.parquet")
    (s,) = get_benchmark("cvbench").load(tmp_path)
    assert s.gold == "C" and s.image_kind == "bytes" and s.load_image().getpixel((0, 0)) == (10, 20, 30)


def test_seedbench_and_vsr_vlmevalkit_tsvs(tmp_path):
    img = png_b64((6, 6, 6))
    write_tsv(tmp_path / "SEEDBench_IMG.tsv", [
        {"index": 1, "image": img, "question": "What is shown?", "A": "a", "B": "b", "C": "c",
         "D": "d", "answer": "C", "category": "Scene Understanding"}])
    (s,) = get_benchmark("seedbench").load(tmp_path)
    assert (s.gold, s.meta["category"]) == ("C", "Scene Understanding")
    assert s.prompt == "What is shown?\nA. a\nB. b\nC. c\nD. d" + LLAVA_MCQ_SUFFIX
    write_tsv(tmp_path / "VSR-zeroshot.tsv", [
        {"index": 0, "image": img, "question": "Is the car behind the suitcase?", "answer": "Yes"}])
    (v,) = get_benchmark("vsr").load(tmp_path)
    assert (v.prompt, v.gold) == ("Is the car behind the suitcase?", "Yes")
