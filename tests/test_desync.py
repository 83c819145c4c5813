"""The DeSync model outside the fixtures: the tiny variant, the published-file loader through a
weight store, and clear errors for inputs it cannot score. Equality with av-benchmark is in
test_desync_golden.py."""

from __future__ import annotations

import math

import pytest
import torch

from selva_core.checkpoint import CheckpointMismatchError
from selva_core.model.desync import (
    DesyncConfig,
    desync_score,
    load_desync_model,
    random_desync_model,
)
from selva_core.model.synchformer import load_synchformer
from selva_core.weights import MissingWeightsError, WeightFile, WeightStore

PATH = "ext_weights/synchformer_state_dict.pth"


@pytest.fixture(scope="module")
def tiny():
    return load_desync_model("tiny")


def store_at(root) -> WeightStore:
    entry = WeightFile("synchformer", "org/repo", PATH)  # no MD5: a tiny stand-in file
    return WeightStore(root, allow_download=False, catalog={"synchformer": entry})


def clip(seconds: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (int(25 * seconds), 3, 224, 224), generator=gen)
    t = torch.arange(int(44100 * seconds)) / 44100
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    stereo = torch.stack([tone, tone + 0.05 * torch.randn(t.shape, generator=gen)])
    return frames.to(torch.uint8), stereo


def test_desync_tiny_is_seeded_and_frozen(tiny):
    again = random_desync_model()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tiny.state_dict().items())
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())
    assert tiny.config == DesyncConfig.tiny()


def test_desync_tiny_scores_a_stereo_44k_clip(tiny):
    """4.8 s, the shortest scorable clip: channels averaged, resampled to 16 kHz, and the score
    is a mean of two |grid| values (multiples of 0.1 s up to 2 s)."""
    frames, stereo = clip(4.8)
    score = desync_score(tiny, frames, stereo, sample_rate=44100)
    assert 0.0 <= score <= 2.0
    assert abs(score * 10 - round(score * 10)) < 1e-5, score


def test_desync_rejects_short_or_malformed_clips(tiny):
    frames, stereo = clip(4.8)
    with pytest.raises(ValueError, match=r"too short for DeSync: 4\.4\d s .* need 4\.8 s"):
        desync_score(tiny, frames[:110], stereo, sample_rate=44100)
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        desync_score(tiny, frames[None], stereo, sample_rate=44100)
    with pytest.raises(ValueError, match="224"):
        desync_score(tiny, frames[:, :, :112, :112], stereo, sample_rate=44100)
    with pytest.raises(ValueError, match="audio must be"):
        desync_score(tiny, frames, stereo[None], sample_rate=44100)


def test_desync_loads_the_published_layout_strictly_from_a_store(tmp_path, tiny):
    """One file serves both: the DeSync model loads every key; MMAudio's sync encoder keeps only
    `vfeat_extractor.*` of the same file."""
    (tmp_path / PATH).parent.mkdir(parents=True)
    state = tiny.state_dict()
    torch.save(state, tmp_path / PATH)
    model = load_desync_model("synchformer", store_at(tmp_path), config=DesyncConfig.tiny())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.mel.filterbank, tiny.mel.filterbank)
    video_only = load_synchformer(tmp_path / PATH, tiny.config.video)
    assert set(video_only.state_dict()) == {k for k in state if k.startswith("vfeat_extractor.")}

    dropped = "transformer.off_head.bias"
    torch.save({k: v for k, v in state.items() if k != dropped}, tmp_path / PATH)
    with pytest.raises(CheckpointMismatchError, match=rf"{PATH}.*missing keys \['{dropped}'\]"):
        load_desync_model("synchformer", store_at(tmp_path), config=DesyncConfig.tiny())


def test_desync_missing_file_names_the_fix(tmp_path):
    with pytest.raises(MissingWeightsError, match="synchformer_state_dict.pth.*download"):
        load_desync_model("small_16k", store_at(tmp_path))
