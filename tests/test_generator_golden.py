"""The generator and Euler/CFG sampler reproduce the official code's outputs (golden fixtures),
and every real-size variant has exactly the published state-dict keys and shapes.

Two fixture families: v1 (`generator_*`, README section 1) and v2 (`generator_v2_*`, section 8,
MMAudio's large_44k_v2 layout). Each test runs only on its own family; both build the model from
the fixture's `config` metadata, so another fixture set of other sizes and seeds works unchanged.
"""

import json
from pathlib import Path

import pytest
import torch
from golden_support import (
    Fixture,
    assert_golden_close,
    assert_state_matches_table,
    find_fixtures,
    fixture_ids,
    golden_dir,
    key_table,
    load_fixture,
)

from selva_core.build import generator_from_state_dict
from selva_core.model.generator import DERIVED_KEYS, Generator, GeneratorConfig
from selva_core.sampling import SamplerConfig, sample_latents
from selva_core.seqconfig import SequenceConfig, config_for_mode
from selva_core.variants import get_spec
from selva_core.weights import WeightsError

V2_FIXTURES = find_fixtures("generator_v2_")
V1_FIXTURES = [p for p in find_fixtures("generator_") if p not in V2_FIXTURES]


def build_golden_generator(path: Path, *, v2: bool) -> tuple[Generator, Fixture]:
    """The generator the fixture's config describes, with its `state.*` loaded strictly."""
    fx = load_fixture(path)
    cfg = fx.config
    assert bool(cfg["v2"]) is v2, f"{path.name}: config says v2={cfg['v2']}, file name says {v2}"
    model = Generator(GeneratorConfig.from_dict(cfg)).eval()
    model.update_seq_lengths(cfg["latent_seq_len"], cfg["clip_seq_len"], cfg["sync_seq_len"])
    model.load_weights(fx.state)
    return model, fx


def check_rope_tables(model: Generator, fx: Fixture) -> None:
    buf = fx.group("buf")
    assert_golden_close(model.latent_rot, buf["latent_rot"], "latent_rot")
    assert_golden_close(model.clip_rot, buf["clip_rot"], "clip_rot")


def check_forward_and_conditions(model: Generator, fx: Fixture) -> None:
    i, o = fx.inputs, fx.outputs
    flow = model(i["latent"], i["clip_f"], i["sync_f"], i["text_f"], i["t"])
    assert_golden_close(flow, o["flow"], f"{fx.path.stem}:flow")
    cond = model.preprocess_conditions(i["clip_f"], i["sync_f"], i["text_f"])
    for name in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
        assert_golden_close(getattr(cond, name), o[f"cond_{name}"], f"{fx.path.stem}:cond_{name}")


def check_unconditional_negative_text(model: Generator, fx: Fixture) -> None:
    i = fx.inputs
    batch = i["latent"].shape[0]
    uncond = model.empty_conditions(batch, negative_text_f=i["neg_text_f"])
    flow = model.predict_flow(i["latent"], i["t"], uncond)
    assert_golden_close(flow, fx.outputs["flow_uncond_negtext"], "flow_uncond_negtext")


def check_euler_cfg_sampling(model: Generator, fx: Fixture, batch_cfg: bool) -> None:
    i, o, cfg = fx.inputs, fx.outputs, fx.config
    batch = i["x0"].shape[0]
    sampler = SamplerConfig(cfg["num_steps"], cfg["cfg_strength"], batch_cfg=batch_cfg)
    cond = model.preprocess_conditions(i["clip_f"], i["sync_f"], i["text_f"])

    neg = model.empty_conditions(batch, negative_text_f=i["neg_text_f"])
    x = sample_latents(model, cond, neg, i["x0"], sampler)
    assert_golden_close(x, o["sample_negtext"], f"{fx.path.stem}:sample_negtext")
    assert_golden_close(model.unnormalize(x), o["sample_negtext_unnorm"], "unnormalized")

    x = sample_latents(model, cond, model.empty_conditions(batch), i["x0"], sampler)
    assert_golden_close(x, o["sample_emptystr"], f"{fx.path.stem}:sample_emptystr")


# ---- v1 (README section 1) ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=V1_FIXTURES, ids=fixture_ids(V1_FIXTURES))
def golden_generator(request):
    return build_golden_generator(request.param, v2=False)


@torch.no_grad()
def test_golden_generator_derived_tables(golden_generator):
    model, fx = golden_generator
    check_rope_tables(model, fx)
    assert_golden_close(model.t_embed.freqs, fx.group("buf")["t_embed.freqs"], "t_embed.freqs")


@torch.no_grad()
def test_golden_generator_forward_and_conditions(golden_generator):
    check_forward_and_conditions(*golden_generator)


@torch.no_grad()
def test_golden_generator_unconditional_negative_text(golden_generator):
    check_unconditional_negative_text(*golden_generator)


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["two_pass_cfg", "batched_cfg"])
@torch.no_grad()
def test_golden_generator_euler_cfg_sampling(golden_generator, batch_cfg):
    check_euler_cfg_sampling(*golden_generator, batch_cfg)


# ---- v2 (README section 8) ----------------------------------------------------------------------
# With a frequency table equal bit for bit to the official one and t * f formed as one float32
# multiply, the README's tighter figure holds for the flows and samples too, so every v2 output
# gets the general check (rel_l2 <= 1e-5, peak <= 2e-5), not the section-8 fallback (2e-4 / 4e-4).


@pytest.fixture(scope="module", params=V2_FIXTURES, ids=fixture_ids(V2_FIXTURES))
def golden_generator_v2(request):
    return build_golden_generator(request.param, v2=True)


@torch.no_grad()
def test_golden_generator_v2_timestep_table_is_bit_equal(golden_generator_v2):
    """v2's table is hidden_dim wide with max period 1 (x1e4): arguments reach 1e4 rad, where
    one float32 ulp of f_i already moves the flow by ~1e-4 (README section 8)."""
    model, fx = golden_generator_v2
    cfg = fx.config
    ref = fx.group("buf")["t_embed.freqs"]
    freqs = model.t_embed.freqs
    width = cfg.get("t_embed_frequency_embedding_size", cfg["hidden_dim"])
    assert model.t_embed.mlp[0].in_features == width == 2 * ref.numel()
    assert freqs.dtype == torch.float32 and freqs.shape == ref.shape
    differ = (freqs != ref).nonzero().flatten().tolist()
    assert not differ, f"{len(differ)} table entries differ from the official bits: {differ[:8]}"
    assert float(ref.max()) == pytest.approx(10000.0 / cfg.get("t_embed_max_period", 1))


@torch.no_grad()
def test_golden_generator_v2_layout(golden_generator_v2):
    """SiLU after every input projection's first layer; clip/text MLPs at index 2."""
    model, fx = golden_generator_v2
    check_rope_tables(model, fx)
    assert any(k.startswith("clip_input_proj.2.") for k in fx.state)
    assert any(k.startswith("text_input_proj.2.") for k in fx.state)
    for proj in ("audio_input_proj", "clip_input_proj", "sync_input_proj", "text_input_proj"):
        assert isinstance(getattr(model, proj)[1], torch.nn.SiLU), proj


@torch.no_grad()
def test_golden_generator_v2_forward_and_conditions(golden_generator_v2):
    check_forward_and_conditions(*golden_generator_v2)


@torch.no_grad()
def test_golden_generator_v2_unconditional_negative_text(golden_generator_v2):
    check_unconditional_negative_text(*golden_generator_v2)


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["two_pass_cfg", "batched_cfg"])
@torch.no_grad()
def test_golden_generator_v2_euler_cfg_sampling(golden_generator_v2, batch_cfg):
    check_euler_cfg_sampling(*golden_generator_v2, batch_cfg)


def test_golden_sequence_lengths_match_official_table():
    table = json.loads((golden_dir() / "seqcfg.json").read_text())
    checked = 0
    for mode in ("16k", "44k"):
        section = table[mode]
        base = SequenceConfig(
            sampling_rate=section["sampling_rate"],
            spectrogram_frame_rate=section["spectrogram_frame_rate"],
        )
        assert config_for_mode(mode) == base
        for row in section["rows"]:
            seq = base.with_duration(row["duration"])
            got = {k: getattr(seq, k) for k in row if k != "duration"}
            assert got == {k: v for k, v in row.items() if k != "duration"}, row
            checked += 1
    assert checked >= 2


# ---- real-size key tables ---------------------------------------------------------------------

KEY_TABLES = {
    "small_16k": ["generator_small_16k"],
    "small_44k": ["generator_small_44k"],
    "medium_44k": ["generator_medium_44k"],
    "large_44k": ["generator_large_44k"],
    "mmaudio_small_16k": ["generator_small_16k"],
    "mmaudio_large_44k_v2": ["generator_large_44k_v2", "generator_large_44k_v2_mmaudio"],
}


def _meta_generator(variant: str) -> Generator:
    spec = get_spec(variant)
    with torch.device("meta"):
        return Generator(spec.generator_config, spec.sequence())


@pytest.mark.parametrize(
    ("variant", "table"),
    [(v, t) for v, tables in KEY_TABLES.items() for t in tables],
)
def test_real_size_state_dict_equals_published_table(variant, table):
    model = _meta_generator(variant)
    tab = key_table(table)
    assert_state_matches_table(model.state_dict(), tab)
    assert sum(p.numel() for p in model.parameters()) == tab["num_params"]


@pytest.mark.parametrize("table", ["generator_small_16k", "generator_large_44k_v2"])
def test_published_layout_loads_strictly_through_our_loader(table):
    """A checkpoint with exactly the table's keys (plus derived tables some files carry) loads."""
    tab = key_table(table)
    variant = {"generator_small_16k": "small_16k", "generator_large_44k_v2": "mmaudio_large_44k_v2"}
    spec = get_spec(variant[table])
    state = {k: torch.empty(v["shape"], device="meta") for k, v in tab["keys"].items()}
    for k in DERIVED_KEYS:
        state[k] = torch.empty(3, device="meta")
    model = generator_from_state_dict(spec, state)
    assert set(model.state_dict()) == set(tab["keys"])

    dropped = next(iter(tab["keys"]))
    state.pop(dropped)
    with pytest.raises(WeightsError, match=rf"missing keys \['{dropped}'\]"):
        generator_from_state_dict(spec, state, source="gen.pth")
