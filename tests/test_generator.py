"""Generator and sampler behaviour on the tiny variant: determinism, batch invariance,
durations, precisions and input validation."""

import pytest
import torch

from selva_core.build import load_generator, random_generator
from selva_core.sampling import SamplerConfig, generate_latents, initial_noise
from selva_core.variants import VARIANTS, UnknownVariantError, get_spec

FAST = SamplerConfig(num_steps=3)


@pytest.fixture(scope="module")
def tiny():
    return load_generator("tiny")


def random_conditions(model, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return (
        torch.randn(batch, model.clip_seq_len, c.clip_dim, generator=g),
        torch.randn(batch, model.sync_seq_len, c.sync_dim, generator=g),
        torch.randn(batch, c.text_seq_len, c.text_dim, generator=g),
    )


def test_tiny_weights_are_deterministic_and_nonzero_output(tiny):
    again = random_generator("tiny")
    for (name, a), (_, b) in zip(
        tiny.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    clip_f, sync_f, text_f = random_conditions(tiny, 1)
    with torch.no_grad():
        flow = tiny(
            torch.randn(1, tiny.latent_seq_len, 20), clip_f, sync_f, text_f, torch.tensor([0.5])
        )
    # O(1) activations: the official init would make this identically zero
    assert 0.1 < flow.std() < 100


def test_same_seed_same_latent_and_different_seeds_differ(tiny):
    conds = random_conditions(tiny, 1)
    a = generate_latents(tiny, *conds, seeds=[7], config=FAST)
    b = generate_latents(tiny, *conds, seeds=[7], config=FAST)
    c = generate_latents(tiny, *conds, seeds=[8], config=FAST)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_noise_depends_only_on_seed():
    alone = initial_noise([5], 40, 20)
    batched = initial_noise([9, 5, 11], 40, 20)
    assert torch.equal(alone[0], batched[1])


# Batched and one-by-one sampling differ only by float reassociation in batched matmuls.
BATCH_TOLERANCE = 1e-5


def test_batched_sampling_equals_one_by_one(tiny):
    clip_f, sync_f, text_f = random_conditions(tiny, 3, seed=1)
    neg = torch.randn(3, 77, tiny.config.text_dim, generator=torch.Generator().manual_seed(2))
    seeds = [11, 12, 13]
    batched = generate_latents(
        tiny, clip_f, sync_f, text_f, seeds, negative_text_f=neg, config=FAST
    )
    for i in range(3):
        single = generate_latents(
            tiny,
            clip_f[i : i + 1],
            sync_f[i : i + 1],
            text_f[i : i + 1],
            [seeds[i]],
            negative_text_f=neg[i : i + 1],
            config=FAST,
        )
        rel = (batched[i] - single[0]).norm() / single[0].norm()
        assert rel < BATCH_TOLERANCE, f"clip {i}: rel_l2 {rel:.2e}"


def test_batched_cfg_equals_two_pass_cfg(tiny):
    conds = random_conditions(tiny, 2, seed=3)
    a = generate_latents(tiny, *conds, seeds=[1, 2], config=SamplerConfig(3, batch_cfg=True))
    b = generate_latents(tiny, *conds, seeds=[1, 2], config=SamplerConfig(3, batch_cfg=False))
    assert ((a - b).norm() / b.norm()) < BATCH_TOLERANCE


def test_cfg_below_one_ignores_the_negative_branch(tiny):
    conds = random_conditions(tiny, 1, seed=4)
    neg_a = torch.zeros(1, 77, tiny.config.text_dim)
    neg_b = torch.ones(1, 77, tiny.config.text_dim)
    cfg = SamplerConfig(3, cfg_strength=0.5)
    a = generate_latents(tiny, *conds, [3], negative_text_f=neg_a, config=cfg)
    b = generate_latents(tiny, *conds, [3], negative_text_f=neg_b, config=cfg)
    assert torch.equal(a, b)
    guided = generate_latents(tiny, *conds, [3], negative_text_f=neg_a, config=SamplerConfig(3))
    assert not torch.allclose(a, guided)


@pytest.mark.parametrize(
    ("variant", "duration"), [("tiny", 4.0), ("tiny", 10.0), ("tiny_44k", 5.0)]
)
def test_duration_sets_every_sequence_length(variant, duration):
    spec = get_spec(variant)
    model = load_generator(spec, duration=duration)
    seq = spec.sequence(duration)
    assert (model.latent_seq_len, model.clip_seq_len, model.sync_seq_len) == (
        seq.latent_seq_len,
        seq.clip_seq_len,
        seq.sync_seq_len,
    )
    latents = generate_latents(model, *random_conditions(model, 1), [0], config=SamplerConfig(1))
    assert latents.shape == (1, seq.latent_seq_len, spec.latent_dim)
    # 4 s at 16 kHz -> 125 latent frames -> 64000 samples; 10 s -> 313 -> 160256
    assert seq.num_audio_frames == seq.latent_seq_len * 2 * (256 if spec.mode == "16k" else 512)
    assert seq.num_audio_frames >= duration * spec.sampling_rate


def test_changing_duration_rebuilds_rope_tables(tiny):
    model = load_generator("tiny")
    model.set_sequence(get_spec("tiny").sequence(4.0))
    assert model.latent_rot.shape[1] == 125 and model.clip_rot.shape[1] == 32
    # clip RoPE is stretched by latent/clip length so both streams share one time axis
    ratio = model.clip_rot[0, 1, 0, 1, 0] / model.latent_rot[0, 1, 0, 1, 0]
    assert ratio == pytest.approx(torch.sin(torch.tensor(125 / 32)) / torch.sin(torch.tensor(1.0)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_run_and_track_fp32(tiny, dtype):
    low = load_generator("tiny", dtype=dtype)
    assert low.dtype == dtype and low.latent_rot.dtype == torch.float32
    assert low.latent_mean.dtype == torch.float32
    conds = random_conditions(tiny, 1, seed=5)
    ref = generate_latents(tiny, *conds, [1], config=FAST)
    got = generate_latents(low, *conds, [1], config=FAST)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert ((got - ref).norm() / ref.norm()) < 0.1


def test_wrong_feature_shapes_are_named(tiny):
    clip_f, sync_f, text_f = random_conditions(tiny, 1)
    with pytest.raises(ValueError, match=r"sync_f must have shape \(B, 192, 64\).*\(1, 100, 64\)"):
        tiny.preprocess_conditions(clip_f, sync_f[:, :100], text_f)
    with pytest.raises(ValueError, match=r"clip_f must have shape"):
        tiny.preprocess_conditions(clip_f[..., :10], sync_f, text_f)
    with pytest.raises(ValueError, match=r"text_f must have shape \(B, 77, 64\)"):
        tiny.preprocess_conditions(clip_f, sync_f, text_f[:, :5])
    with pytest.raises(ValueError, match=r"latent must have shape \(B, 250, 20\)"):
        tiny.predict_flow(torch.randn(1, 10, 20), torch.zeros(1), tiny.empty_conditions(1))
    with pytest.raises(ValueError, match="3 seeds for a batch of 1"):
        generate_latents(tiny, clip_f, sync_f, text_f, [1, 2, 3])


def test_nan_features_are_rejected(tiny):
    clip_f, sync_f, text_f = random_conditions(tiny, 1)
    text_f[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="text_f contains NaN"):
        tiny.preprocess_conditions(clip_f, sync_f, text_f)


def test_unknown_variant_lists_known_ones():
    with pytest.raises(UnknownVariantError, match="unknown variant 'huge_48k'.*small_16k"):
        get_spec("huge_48k")
    with pytest.raises(UnknownVariantError):
        load_generator("small_8k")


def test_every_variant_names_family_size_and_rate():
    for name, spec in VARIANTS.items():
        assert spec.family in ("selva", "mmaudio")
        assert spec.mode in ("16k", "44k")
        assert spec.sampling_rate == (16000 if spec.mode == "16k" else 44100)
        if not spec.is_tiny:
            assert spec.generator_weights and spec.generator_weights in spec.weight_keys, name
    assert get_spec("mmaudio_large_44k_v2").generator_config.v2
    assert not get_spec("large_44k").generator_config.v2
