"""Train step: sharded (data=2, fsdp=2, tensor=2) equals one device; frozen parts; loss; accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train_standin import StandIn, make_batch
from vlm_spatial import parallel
from vlm_spatial.training import step as step_lib
from vlm_spatial.training.loop import StageSpec, build_stage


def _setup(mesh, parts=("projector", "lm", "vision"), accum=1, lr=1e-3, batch=8, remat="full"):
    spec = StageSpec("finetune", num_steps=10, trainable_parts=parts, lr=lr, global_batch=batch,
                     grad_accum_steps=accum, warmup_ratio=0.0)
    return build_stage(lambda: StandIn(rngs=nnx.Rngs(0), remat=remat), mesh, spec)


def _run(setup, batches):
    state = setup.init_state()
    losses = []
    for b in batches:
        state, m = setup.step_fn(b)(state, parallel.shard_batch(b, setup.mesh))
        losses.append(float(m["loss"]))
    return state, losses


def test_sharded_step_matches_single_device():
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, 8) for _ in range(2)]
    mesh8 = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    mesh1 = parallel.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    s8 = _setup(mesh8)
    # params really are sharded on the 8-device mesh
    emb = s8.params_shardings["decoder"]["embed"]["embedding"]
    assert emb.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    st8, l8 = _run(s8, batches)
    st1, l1 = _run(_setup(mesh1), batches)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4),
                 st8["params"], st1["params"])
    leaf = st8["params"]["decoder"]["layers"]["up"]["kernel"]
    assert len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.shape != leaf.shape


def test_grad_accumulation_is_exact():
    rng = np.random.default_rng(1)
    batches = [make_batch(rng, 8)]
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    st_a, la = _run(_setup(mesh, accum=2), batches)
    st_b, lb = _run(_setup(mesh, accum=1), batches)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4),
                 st_a["params"], st_b["params"])


@pytest.mark.parametrize("parts", [("projector",), ("projector", "lm")])
def test_only_trainable_parts_change_and_hold_optimizer_state(parts):
    rng = np.random.default_rng(2)
    mesh = parallel.make_mesh(data=2, fsdp=4, tensor=1)
    setup = _setup(mesh, parts=parts)
    before = jax.device_get(setup.init_state()["params"])
    state, _ = _run(setup, [make_batch(rng, 8)])
    after = jax.device_get(state["params"])
    key = {"projector": "projector", "lm": "decoder", "vision": "vision"}
    for part in ("projector", "lm", "vision"):
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[key[part]]),
                                                            jax.tree.leaves(after[key[part]]))]
        assert all(changed) if part in parts else not any(changed), part
    # optimizer state: Adam moments only for the trainable parts' params
    mu = state["opt_state"][1][0].mu
    assert set(mu) == {key[p] for p in parts}


def test_shifted_cross_entropy_matches_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = np.array([[-100, 1, 2, -100, 3], [-100, -100, 4, 5, 6]], np.int32)
    s, c = step_lib.shifted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    lp = jax.nn.log_softmax(logits[:, :-1], -1)
    ref = [-lp[b, t, labels[b, t + 1]] for b in range(2) for t in range(4) if labels[b, t + 1] != -100]
    assert float(c) == len(ref) == 6
    np.testing.assert_allclose(float(s), float(np.sum(ref)), rtol=1e-6)


def test_microbatches_keep_device_shards():
    x = jnp.arange(8)
    mb = step_lib.microbatches({"x": x}, 2)["x"]
    np.testing.assert_array_equal(np.asarray(mb), [[0, 2, 4, 6], [1, 3, 5, 7]])
