"""Generation: the KV-cache loop against cache-free full recomputation (batched, left-padded, with
images, fixed-resolution and NaFlex), the vision encoder run once per prompt, compile count per
bucket, sharded generation on 8 fake devices, sampling, stop sequences, option scoring,
`LoadedVLM.generate` end to end with a tokenizer, and greedy answers that do not depend on the
batch size (fp32 and bf16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm_spatial import parallel
from vlm_spatial.api import LoadedVLM
from vlm_spatial.convert.params import module_from_params
from vlm_spatial.data import synthetic
from vlm_spatial.data.templates import load_tokenizer
from vlm_spatial.evaluation import generate as gen
from vlm_spatial.models import presets
from vlm_spatial.models.vision import VisionEncoder
from vlm_spatial.models.vlm import VLM

VOCAB = 64
NEW = 8


def random_params(cfg, seed=0) -> dict:
    """Random weights everywhere (norm scales around 1), so generations are not degenerate."""
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0)))))
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        is_norm = any("norm" in str(getattr(k, "key", "")) for k in path)
        out.append(1.0 + 0.2 * noise if is_norm else 0.15 * noise)
    return jax.tree_util.tree_unflatten(tree, out)


def tiny(vision="tiny-clip", vocab=VOCAB, shardings=None, seed=0, dtype="float32"):
    cfg = presets.vlm_config(vision, "tiny-llama", vocab_size=vocab, vision_overrides={"dtype": dtype},
                             decoder_overrides={"dtype": dtype})
    model = module_from_params(lambda: VLM(cfg, rngs=nnx.Rngs(0)), random_params(cfg, seed), shardings)
    return cfg, model


def image_batch(cfg, rows, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    v = cfg.vision
    if not v.naflex:
        return {"pixel_values": rng.standard_normal((rows, v.image_size, v.image_size, 3)).astype(np.float32)}
    p, n = v.patch_size, v.max_num_patches
    shapes = np.asarray([[4, 4], [2, 6], [3, 5], [4, 3]][:rows], np.int32)
    mask = np.zeros((rows, n), np.int32)
    for r, (h, w) in enumerate(shapes):
        mask[r, : h * w] = 1
    pix = rng.standard_normal((rows, n, p * p * 3)).astype(np.float32) * mask[..., None]
    return {"pixel_values": pix, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def prompts(cfg, text_lengths, seed=2) -> list[list[int]]:
    """Prompts `text, <image slots>, text` of different lengths (ids avoid 0 = eos/pad and the image id)."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    out = []
    for t in text_lengths:
        ids = rng.integers(1, cfg.image_token_id, t).tolist()
        out.append(ids[:2] + [cfg.image_token_id] * n + ids[2:])
    return out


@nnx.jit
def _full_logits(model, ids, mask, images):
    return model(ids, attention_mask=mask, **images).logits


def cache_free(model, seqs, images, steps):
    """Greedy tokens by a full forward over the whole sequence every step (rows right-padded to
    one length, so the reference pads differently from the left-padded loop under test)."""
    b = len(seqs)
    total = max(map(len, seqs)) + steps
    ids, mask = np.zeros((b, total), np.int32), np.zeros((b, total), np.int32)
    ends = []
    for r, s in enumerate(seqs):
        ids[r, : len(s)], mask[r, : len(s)] = s, 1
        ends.append(len(s))
    images = {k: jnp.asarray(v) for k, v in images.items()}
    out = np.zeros((b, steps), np.int32)
    for i in range(steps):
        logits = np.asarray(_full_logits(model, jnp.asarray(ids), jnp.asarray(mask), images))
        for r in range(b):
            tok = int(logits[r, ends[r] - 1].argmax())
            out[r, i] = tok
            ids[r, ends[r]], mask[r, ends[r]] = tok, 1
            ends[r] += 1
    return out


@pytest.mark.parametrize("vision", ["tiny-clip", "tiny-siglip2"])
def test_kv_cache_generation_equals_cache_free(vision, monkeypatch):
    cfg, model = tiny(vision)
    seqs = prompts(cfg, [3, 9, 14])
    images = image_batch(cfg, len(seqs))
    ids, mask = gen.left_pad(seqs, pad_id=0)
    # eos id outside the vocabulary: every row runs the full NEW steps
    decode = gen.DecodeConfig(max_new_tokens=NEW, eos_token_id=VOCAB)

    calls = []
    original = VisionEncoder.__call__
    monkeypatch.setattr(VisionEncoder, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    gen._generate.clear_cache()
    tokens = gen.generate_tokens(model, ids, mask, images, decode)
    # traced once: the encoder appears in the prefill only, never in the decode loop's body
    assert len(calls) == 1
    monkeypatch.undo()

    expected = cache_free(model, seqs, images, NEW)
    np.testing.assert_array_equal(tokens, expected)
    assert len({tuple(r) for r in expected.T}) > 2, "degenerate generations make a weak test"


def test_sharded_generation_matches_single_device():
    cfg, single = tiny()
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    abstract = nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0))))
    _, sharded = tiny(shardings=parallel.param_shardings(abstract, mesh))
    assert len(sharded.decoder.layers.mlp.up_proj.kernel[...].sharding.device_set) == 8
    seqs = prompts(cfg, [5, 11, 2])  # 3 rows: padded to the 4 batch shards
    images = image_batch(cfg, 3)
    ids, mask = gen.left_pad(seqs, pad_id=0)
    decode = gen.DecodeConfig(max_new_tokens=NEW, eos_token_id=VOCAB)
    want = gen.generate_tokens(single, ids, mask, images, decode)
    got = gen.generate_tokens(sharded, ids, mask, images, decode, mesh=mesh)
    np.testing.assert_array_equal(got, want)


def test_sampling_stop_sequences_and_eos():
    cfg, model = tiny()
    seqs = prompts(cfg, [4, 7])
    images = image_batch(cfg, 2)
    ids, mask = gen.left_pad(seqs, pad_id=0)
    greedy = gen.generate_tokens(model, ids, mask, images, gen.DecodeConfig(NEW, eos_token_id=VOCAB))

    def sample(seed, **kw):
        decode = gen.DecodeConfig(NEW, eos_token_id=VOCAB, temperature=kw.pop("temperature", 1.0), **kw)
        return gen.generate_tokens(model, ids, mask, images, decode, seed=seed)

    np.testing.assert_array_equal(sample(3), sample(3))
    assert not np.array_equal(sample(3, temperature=5.0), sample(4, temperature=5.0))
    # a nucleus this small keeps only the most likely token: sampling is then greedy
    np.testing.assert_array_equal(sample(5, top_p=1e-6), greedy)

    # a stop sequence ends row 0 right after it; the rest of the row is EOS
    stop = tuple(int(t) for t in greedy[0, 2:4])
    out = gen.generate_tokens(model, ids, mask, images, gen.DecodeConfig(NEW, eos_token_id=VOCAB, stop_sequences=(stop,)))
    first_hit = next(i for i in range(1, NEW) if tuple(greedy[0, i - 1: i + 1]) == stop)
    np.testing.assert_array_equal(out[0, : first_hit + 1], greedy[0, : first_hit + 1])
    assert (out[0, first_hit + 1:] == VOCAB).all()
    # EOS: the greedy token at step 2 of row 1 made the EOS id ends that row there
    eos = int(greedy[1, 2])
    out = gen.generate_tokens(model, ids, mask, images, gen.DecodeConfig(NEW, eos_token_id=eos))
    k = list(out[1]).index(eos)
    assert k <= 2 and gen.truncate(out[1], eos) == list(greedy[1, :k])


def test_score_options_equals_full_forward_log_likelihood():
    cfg, model = tiny()
    seqs = prompts(cfg, [3, 8])
    images = image_batch(cfg, 2)
    options = [[[5], [6, 7]], [[9, 10, 11], [12], [13]]]
    scores = gen.score_options(model, seqs, options, images, pad_id=0)
    # reference: every prompt + option as a row of one right-padded batch (causal: as unpadded)
    rows = [(b, seq + opt, len(seq), opt) for b, (seq, opts) in enumerate(zip(seqs, options)) for opt in opts]
    t = max(len(r[1]) for r in rows)
    ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.int32)
    for i, (_, full, _, _) in enumerate(rows):
        ids[i, : len(full)], mask[i, : len(full)] = full, 1
    pix = {k: jnp.asarray(v[[r[0] for r in rows]]) for k, v in images.items()}
    logp = np.asarray(jax.nn.log_softmax(_full_logits(model, jnp.asarray(ids), jnp.asarray(mask), pix), axis=-1))
    want = [sum(float(logp[i, start - 1 + k, tok]) for k, tok in enumerate(opt)) for i, (_, _, start, opt) in enumerate(rows)]
    np.testing.assert_allclose([s for row in scores for s in row], want, atol=1e-4)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = synthetic.coverage_text() + ["left right above below yes no A B"]
    synthetic.train_tokenizer(texts, str(d))
    return str(d)


def test_loaded_vlm_generate_buckets_compile_a_few_times(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    cfg, model = tiny(vocab=len(tok))
    vlm = LoadedVLM(model, cfg, tok)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), np.uint8)
    short = "Is the red square left or right of the blue circle?"
    long = " ".join([short] * 4)
    gen._generate.clear_cache()
    # every program has DECODE_ROWS rows and one bucket, with or without images: three programs in
    # all (short prompts with an image, the short text-only one, long prompts with an image)
    outs = [vlm.generate([image] * 3, [short] * 3, max_new_tokens=4),
            vlm.generate([image, None, image, image], [short, short, short, short[:20]], max_new_tokens=4),
            vlm.generate([image] * 3, [long, short, long], max_new_tokens=4)]
    assert gen.compiled_programs() == 3
    assert all(isinstance(t, str) for o in outs for t in o)
    assert outs[0][0] == outs[1][0] == outs[2][1]  # same question, same image: same greedy answer
    # the prompt is the vicuna_v1 template with the image slots expanded
    ids = vlm.prompt_ids(short, has_image=True)
    assert (ids == cfg.image_token_id).sum() == cfg.num_image_tokens
    assert ids[0] == tok.bos_token_id
    # a stop string cuts the answer before it
    stop = outs[0][0].split()[1] if len(outs[0][0].split()) > 1 else outs[0][0].split()[0]
    cut = vlm.generate([image], [short], max_new_tokens=4, stop_strings=[stop])[0]
    assert cut == gen.cut_at_stop(outs[0][0], [stop]).strip()


def test_fixed_shape_groups():
    lengths = [10, 40, 12, 100, 33, 20, 5, 31, 30, 1]
    groups = gen.fixed_shape_groups(lengths, rows=3, buckets=(32, 64, 128))
    assert groups == [[0, 2, 5], [6, 7, 8], [9], [1, 4], [3]]
    kinds = [i % 2 for i in range(len(lengths))]
    assert gen.fixed_shape_groups(lengths, 8, (32, 64, 128), kinds) == [[0, 2, 6, 8], [1], [3], [4], [5, 7, 9]]
    assert gen.program_rows(1) == gen.DECODE_ROWS and gen.program_rows(3) == 9


def batch_answers(vlm, prompts, images, batch, how):
    """Answers to all `prompts`, `batch` at a time, by `how(vlm, images, prompts)`."""
    return [a for i in range(0, len(prompts), batch) for a in how(vlm, images[i:i + batch], prompts[i:i + batch])]


def fixed_shapes(vlm, images, prompts):
    return vlm.generate(images, prompts, max_new_tokens=NEW)


@pytest.fixture(scope="module")
def mixed_questions(tokenizer_dir):
    """16 questions of 1 to 90 words (prompts of 3 length buckets), one image each."""
    rng = np.random.default_rng(7)
    words = "left right above below red blue green square circle triangle is the of or".split()
    prompts = [" ".join(rng.choice(words, n)) + "?" for n in rng.integers(1, 90, 16)]
    return prompts, [rng.integers(0, 255, (24, 30, 3), np.uint8) for _ in prompts]


def tiny_loaded(tokenizer_dir, dtype):
    tok = load_tokenizer(tokenizer_dir)
    cfg, model = tiny(vocab=len(tok), seed=3, dtype=dtype)
    return LoadedVLM(model, cfg, tok)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_answers_do_not_depend_on_the_batch(tokenizer_dir, mixed_questions, dtype):
    """The questions answered 1, 8 and 16 at a time: the same answers, in fp32 and in bf16."""
    vlm = tiny_loaded(tokenizer_dir, dtype)
    prompts, images = mixed_questions
    assert len({gen.bucket_length(len(vlm.prompt_ids(p, True))) for p in prompts}) == 3
    answers = {b: batch_answers(vlm, prompts, images, b, fixed_shapes) for b in (1, 8, 16)}
    assert answers[1] == answers[8] == answers[16]
    assert len(set(answers[1])) > 4, "degenerate generations make a weak test"


@pytest.mark.slow
def test_whole_batch_padding_moved_bf16_answers(tokenizer_dir, mixed_questions, capsys):
    """Why the groups have one fixed shape: the previous policy (the whole batch left-padded to its
    longest prompt's bucket and to a power-of-two row count, one program) gave other bf16 answers
    at batch 8 and 16 than at batch 1 on these questions, because XLA picks its kernels by shape
    (fp32 rounding left them alone). Prints the agreement (-s)."""
    vlm = tiny_loaded(tokenizer_dir, "bfloat16")
    prompts, images = mixed_questions

    def whole_batch(vlm, images, prompts):
        seqs = [vlm.prompt_ids(p, True) for p in prompts]
        rows = 1 << max(len(seqs) - 1, 0).bit_length()
        ids, mask = gen.left_pad(seqs, vlm.encoder.pad_id, rows=rows)
        tokens = gen.generate_tokens(vlm.model, ids, mask, vlm.image_inputs(images, rows),
                                     gen.DecodeConfig(NEW, eos_token_id=vlm.encoder.eos_id))
        return [vlm.tokenizer.decode(gen.truncate(t, vlm.encoder.eos_id), skip_special_tokens=True).strip()
                for t in tokens[: len(prompts)]]

    before = {b: batch_answers(vlm, prompts, images, b, whole_batch) for b in (1, 8, 16)}
    same = {b: sum(x == y for x, y in zip(before[1], before[b])) for b in (8, 16)}
    with capsys.disabled():
        print(f"\nbf16, whole-batch padding: batch 8 vs 1 {same[8]}/{len(prompts)}, batch 16 vs 1 "
              f"{same[16]}/{len(prompts)} answers identical (fixed-shape groups: all, see above)")
    assert min(same.values()) < len(prompts)


def test_loaded_vlm_preprocesses_for_naflex(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    cfg, model = tiny("tiny-siglip2", vocab=len(tok))
    vlm = LoadedVLM(model, cfg, tok)
    assert vlm.image_config.naflex and vlm.image_config.encoder == "siglip2"
    wide = np.random.default_rng(0).integers(0, 255, (20, 60, 3), np.uint8)
    fields = vlm.image_inputs([wide, None], rows=2)
    assert fields["pixel_values"].shape == (2, cfg.vision.max_num_patches, cfg.vision.patch_size ** 2 * 3)
    h, w = fields["spatial_shapes"][0]
    assert w > h and fields["pixel_attention_mask"][0].sum() == h * w
    assert not fields["pixel_values"][1].any()  # text-only row: zero pixels on a valid grid (finite features)
    assert len(vlm.generate([wide, None], ["Is there a red square?"] * 2, max_new_tokens=3)) == 2
