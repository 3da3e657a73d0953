"""The training loop: a NaN/inf loss stops the stage with a message, and the last good checkpoint
(not the bad state) is what stays on disk."""
import jax
import numpy as np
import pytest

from train_tiny import make_batch, tiny_setup
from vlm_spatial import parallel
from vlm_spatial.training.checkpoint import StageCheckpointer
from vlm_spatial.training.loop import NonFiniteLoss, read_metrics, train_stage


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    mesh = parallel.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    setup = tiny_setup(mesh, batch=4, remat="none")
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, 4) for _ in range(4)]
    batches[2]["pixel_values"][1] = np.nan  # step 3 sees a corrupt image
    ckpt = StageCheckpointer(str(tmp_path / "ckpt"), save_every=1, max_to_keep=5)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 3; stopping\. Last good checkpoint: step 2 in "):
        train_stage(setup, setup.init_state(), iter(batches), ckpt, workdir=str(tmp_path), tensorboard=False,
                    progress=False)
    assert ckpt.latest_step() == 2
    state, meta = ckpt.restore(2, setup.abstract_state, setup.state_shardings)
    assert int(state["step"]) == 2 and meta["stage_done"] is False
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    assert sorted(read_metrics(str(tmp_path), "finetune")) == [1, 2, 3]  # the bad step is logged too
    ckpt.close()
