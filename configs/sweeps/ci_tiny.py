"""The reduced sweep CI runs (tests/test_sweep.py, the notebook test): AIMv2 with and without 2D-RoPE x
two seeds, a few steps on a small synthetic set. It checks the machinery, not the science:
`python -m vlm_spatial.sweep --config=configs/sweeps/ci_tiny.py --workdir=/tmp/ci_sweep`.
"""
from configs.sweeps import paper_tiny

OVERRIDES = ("log.progress=False", "stages.pretrain.num_steps=2", "stages.finetune.num_steps=4",
             "stages.pretrain.global_batch=8", "stages.finetune.global_batch=8",
             "data.synthetic.num_train=64", "data.synthetic.num_test=24", "checkpoint.save_every=2",
             "eval.batch_size=24")


def get_config():
    return paper_tiny.sweep("ci_tiny", ("aimv2", "aimv2_2drope"), (0, 1), OVERRIDES)
