"""Train step on the tiny real VLM (scan + remat): sharded (data=2, fsdp=2, tensor=2) and accumulated
equals one device; stage 1 / stage 2 train exactly the configured parts; the loss."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import clip
from train_tiny import make_batch, tiny_setup
from vlm_spatial import parallel
from vlm_spatial.training import step as step_lib
from vlm_spatial.training.optimizer import PARTS


def _run(setup, batches):
    state = setup.init_state()
    losses = []
    for b in batches:
        state, m = setup.step_fn(b)(state, parallel.shard_batch(b, setup.mesh))
        losses.append(float(m["loss"]))
    return state, losses


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4), a, b)


def test_sharded_and_accumulated_step_matches_single_device():
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, 8) for _ in range(2)]
    mesh1 = parallel.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    mesh8 = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    st1, l1 = _run(tiny_setup(mesh1), batches)
    s8 = tiny_setup(mesh8)
    # params really are sharded on the 8-device mesh: embedding [vocab, embed] over (tensor, fsdp)
    assert s8.params_shardings["decoder"]["embed_tokens"]["embedding"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    st8, l8 = _run(s8, batches)
    st1a, l1a = _run(tiny_setup(mesh1, accum=2), batches)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    np.testing.assert_allclose(l1a, l1, rtol=1e-5)
    _close(st8["params"], st1["params"])
    _close(st1a["params"], st1["params"])
    _close(st8["opt_state"], st1["opt_state"])
    leaf = st8["params"]["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.shape != leaf.shape


def _changed(before: dict, after: dict) -> dict[str, bool]:
    """Per part: did every leaf change (True), none (False); a mix fails."""
    out = {}
    for part, key in PARTS.items():
        flags = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[key]), jax.tree.leaves(after[key]))]
        assert all(flags) or not any(flags), f"{part}: only some params changed"
        out[part] = all(flags)
    return out


def test_stages_train_exactly_the_configured_parts():
    """Stage 1 then stage 2 with the paper config's trainable parts: only those parts change, and
    the optimizer state holds moments for them alone."""
    rng = np.random.default_rng(2)
    mesh = parallel.make_mesh(data=2, fsdp=4, tensor=1)
    params = None
    for stage in ("pretrain", "finetune"):
        parts = tuple(clip.get_config().stages[stage].trainable_parts)
        setup = tiny_setup(mesh, parts=parts)
        state = setup.init_state(params)
        before = jax.device_get(state["params"])
        batch = make_batch(rng, 8)
        state, _ = setup.step_fn(batch)(state, parallel.shard_batch(batch, mesh))
        assert _changed(before, jax.device_get(state["params"])) == {p: p in parts for p in PARTS}, stage
        mu = state["opt_state"][1][0].mu  # (clip, adamw) chain -> adam state
        assert set(mu) == {PARTS[p] for p in parts}, stage
        params = state["params"]
    assert parts == ("projector", "lm")


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

