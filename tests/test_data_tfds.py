"""The synthetic set as a TFDS ArrayRecord dataset, read through tfds.data_source without TensorFlow."""
import json
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from vlm_spatial.data import synthetic  # noqa: E402
from vlm_spatial.data.pipeline import build_train_pipeline  # noqa: E402


def test_tfds_build_reads_back_and_feeds_the_same_pipeline(tmp_path):
    paths = synthetic.generate(str(tmp_path), num_train=12, num_val=3, num_test=3, seed=2, write_tfds=True)
    assert "tensorflow" not in sys.modules
    ds = tfds.data_source("vlm_spatial_synthetic", data_dir=paths["tfds"], split="train")
    with open(paths["train"]) as f:
        records = json.load(f)
    assert len(ds) == len(records)
    ex = ds[4]  # record order is kept; images decode to the PNG's pixels
    assert ex["id"].decode() == records[4]["id"]
    from PIL import Image

    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(os.path.join(tmp_path, records[4]["image"]))))
    assert [v.decode() for v in ex["conversations"]["value"]] == [t["value"] for t in records[4]["conversations"]]

    def batches(**source):
        with build_train_pipeline(**source, tokenizer_dir=paths["tokenizer"], template="vicuna_v1", max_len=128,
                                  global_batch_size=4, seed=1, num_epochs=2, num_image_tokens=4, image_token_id=90,
                                  image={"encoder": "aimv2", "image_size": 32}, shard_index=0, shard_count=1) as it:
            return list(it)

    from_json, from_tfds = batches(synthetic_dir=str(tmp_path)), batches(tfds_data_dir=paths["tfds"])
    assert len(from_json) == len(from_tfds) == 6
    for a, b in zip(from_json, from_tfds):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert "tensorflow" not in sys.modules
