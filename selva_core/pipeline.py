"""One clip end to end, no Ray: video + prompt -> features -> waveform, and audio -> latent.

`Pipeline` loads each component once; `extract_features` and `generate` are the two halves
that the Ray jobs run on separate actors (features go through Parquet in between).

Track duration: a clip's track lasts exactly the clip's duration (`DecodedClip.track_duration`:
the container's video end - start, capped at the length asked for), round(duration * rate)
samples. The model samples the sequence of that duration, one sync window (0.64 s) at least
(`ModelSpec.sequence`), its frames repeated at the end where the decoded ones stop short, and
the waveform is trimmed to the track.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import torch
import torch.nn.functional as F

from . import build, defaults
from .audio.vae import DiagonalGaussian, latent_to_sequence, sequence_to_latent
from .conditioning import load_clip, load_t5, validate_prompts
from .sampling import SamplerConfig, generate_latents
from .seqconfig import SequenceConfig, track_samples
from .variants import ModelSpec, get_spec
from .video.decode import (
    DecodeConfig,
    DecodedClip,
    decode_clip,
    normalize_clip_frames,
    normalize_sync_frames,
)
from .video.mask import MaskSettings, apply_mask
from .weights import WeightStore

log = logging.getLogger(__name__)

DEFAULT_SEED = defaults.DEFAULT_SEED
DEFAULT_NEGATIVE_PROMPT = ""  # the official demo's default: CLIP("") as the negative


@dataclass
class Features:
    """What the generator needs for one clip, on the CPU, in float32.

    `sync_f` depends on the prompt for SelVA variants (text-conditioned Synchformer).
    `clip_f` holds CLIP frame features for MMAudio variants and is None for SelVA, which uses
    the generator's learned empty clip feature as the official code does.
    """

    variant: str
    prompt: str
    duration: float  # the clip's exact duration: its track's length (see the module doc)
    sync_f: torch.Tensor  # (sync_seq_len, sync_dim)
    text_f: torch.Tensor  # (77, text_dim) CLIP per-token text features of the prompt
    clip_f: torch.Tensor | None = None  # (clip_seq_len, clip_dim), MMAudio family
    source: str = ""
    start: float = 0.0
    has_audio: bool = False
    latent: DiagonalGaussian | None = None  # posterior of the clip's own audio, (N, C) each
    info: dict = field(default_factory=dict)  # decode metadata, token counts, timings
    mask_digest: str | None = None  # object mask used on the frames (MaskSettings.digest)


@dataclass
class PipelineConfig:
    variant: str = "small_16k"
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    # Windows per TextSynch forward. None picks per device: one at a time on CPU (measured
    # 1.6x faster than all at once: each window is already a big matmul), all of a clip's
    # windows at once on GPU.
    window_chunk: int | None = None
    with_audio_encoder: bool = False
    frame_rule: str = "official"
    # False: only the feature encoders are loaded (no generator, vocoder or VAE decoder use),
    # as on feature-extraction actors.
    generation: bool = True


@dataclass
class ClipInput:
    """Decoded frames and audio of one clip, as the feature encoders need them.

    `DecodedClip` has these fields too; this plain form travels between Ray stages.
    """

    path: str
    start: float
    duration: float  # the clip's exact duration (`DecodedClip.track_duration`), not the frames'
    sync_frames: torch.Tensor  # (Ts, 3, 224, 224) uint8
    clip_frames: torch.Tensor  # (Tc, 3, 384, 384) uint8; may be empty for SelVA
    audio: torch.Tensor | None = None
    has_audio: bool = False
    padded: bool = False
    source_fps: float = 0.0
    mask_digest: str | None = None


def default_window_chunk(device: str | torch.device) -> int | None:
    return 1 if torch.device(device).type == "cpu" else None


def clip_duration(clip: DecodedClip | ClipInput) -> float:
    """The clip's exact duration: a decoded clip's track duration (its `duration` is what the
    frames cover), a `ClipInput`'s duration."""
    if isinstance(clip, DecodedClip):
        return clip.duration if clip.track_duration is None else clip.track_duration
    return clip.duration


def repeat_last(frames: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` frames, the last one repeated where there are fewer (as the decoder
    pads a clip shorter than one sync window)."""
    n = frames.shape[0]
    if n >= length or n == 0:
        return frames[:length]
    return torch.cat([frames, frames[-1:].expand(length - n, *frames.shape[1:])])


def fit_length(x: torch.Tensor, length: int, dim: int = 0) -> torch.Tensor:
    """Trim or zero-pad `x` along `dim` to `length`."""
    n = x.shape[dim]
    if n >= length:
        return x.narrow(dim, 0, length)
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, length - n]
    return F.pad(x, pad)


@dataclass
class Components:
    """The modules a pipeline runs; built by `load_components` or by hand (benchmarks)."""

    generator: torch.nn.Module | None
    sync_encoder: torch.nn.Module
    clip: torch.nn.Module
    t5: torch.nn.Module | None
    vae: torch.nn.Module | None
    vocoder: torch.nn.Module | None
    mel: torch.nn.Module


def load_components(config: PipelineConfig, store: WeightStore | None = None) -> Components:
    spec = get_spec(config.variant)
    kw = {"dtype": config.dtype, "device": config.device}
    chunk = config.window_chunk
    if chunk is None:
        chunk = default_window_chunk(config.device)
    gen = config.generation
    need_vae = gen or config.with_audio_encoder
    return Components(
        generator=build.load_generator(spec, store, **kw) if gen else None,
        sync_encoder=build.load_sync_encoder(spec, store, window_chunk=chunk, **kw),
        clip=load_clip(spec, store, **kw),
        t5=load_t5(spec, store, **kw) if spec.uses_text_sync else None,
        vae=build.load_vae(spec, store, with_encoder=config.with_audio_encoder, **kw)
        if need_vae
        else None,
        vocoder=build.load_vocoder(spec, store, **kw) if gen else None,
        mel=build.mel_converter(spec, config.device),
    )


def decode_config_for(
    spec: ModelSpec, frame_rule: str = "official", ignore_rotation: bool = False
) -> DecodeConfig:
    """How a variant's videos are decoded (family resize; CLIP frames only where used;
    frames turned upright by their display matrix unless `ignore_rotation`)."""
    return DecodeConfig(
        family=spec.family,
        frame_rule=frame_rule,
        keep_clip_frames=spec.uses_clip_frames,
        ignore_rotation=ignore_rotation,
    )


def decode_input(
    config: PipelineConfig,
    video: str | Path,
    *,
    start: float = 0.0,
    max_duration: float = 8.0,
    with_audio: bool = False,
    mask: MaskSettings | None = None,
) -> DecodedClip:
    """`Pipeline.decode` without the models: a command checks its video before any loads."""
    spec = get_spec(config.variant)
    decoding = decode_config_for(spec, config.frame_rule)
    clip = decode_clip(
        video,
        start=start,
        max_duration=max_duration,
        audio_rate=spec.sampling_rate if with_audio else None,
        config=decoding,
    )
    return clip if mask is None else apply_mask(clip, mask, config=decoding)


class SamplingOptions(TypedDict, total=False):
    """The keyword options of `Pipeline.sample_latents`, which `generate` passes on."""

    negative_prompt: str | None | Sequence[str | None]
    seed: int | Sequence[int]
    steps: int
    cfg: float
    progress: Callable[[int, int], None] | None
    known_latents: Sequence[torch.Tensor | None] | None


class Pipeline:
    """All SelVA / MMAudio components for one variant, loaded once."""

    def __init__(
        self,
        config: PipelineConfig | None = None,
        store: WeightStore | None = None,
        components: Components | None = None,
    ):
        self.config = config or PipelineConfig()
        self.spec: ModelSpec = get_spec(self.config.variant)
        t0 = time.perf_counter()
        parts = components or load_components(self.config, store)
        self.generator = parts.generator
        self.sync_encoder = parts.sync_encoder
        self.clip = parts.clip
        self.t5 = parts.t5
        self.vae = parts.vae
        self.vocoder = parts.vocoder
        self.mel = parts.mel
        if components is None:
            log.info("loaded %s in %.1f s", self.spec.name, time.perf_counter() - t0)

    @property
    def sampling_rate(self) -> int:
        return self.spec.sampling_rate

    def sequence(self, duration: float) -> SequenceConfig:
        return self.spec.sequence(duration)

    # ---- features -------------------------------------------------------------------------

    def decode(
        self,
        video: str | Path,
        *,
        start: float = 0.0,
        max_duration: float = 8.0,
        with_audio: bool = False,
        mask: MaskSettings | None = None,
    ) -> DecodedClip:
        """Frames for this variant's family, and the audio track at its rate if asked;
        with `mask`, background greyed out (`selva_core.video.mask`)."""
        return decode_input(
            self.config,
            video,
            start=start,
            max_duration=max_duration,
            with_audio=with_audio,
            mask=mask,
        )

    @torch.no_grad()
    def extract_features(
        self,
        video: str | Path | DecodedClip,
        prompt: str,
        *,
        start: float = 0.0,
        max_duration: float = 8.0,
        with_audio_latents: bool = False,
        mask: MaskSettings | None = None,
    ) -> Features:
        """Decode (unless given a decoded clip) and encode one clip's conditions; `mask`
        greys out the background first (the features then carry its digest)."""
        if isinstance(video, DecodedClip):
            decoded = video
            if mask is not None:
                config = decode_config_for(self.spec, self.config.frame_rule)
                decoded = apply_mask(decoded, mask, config=config)
        else:
            decoded = self.decode(
                video,
                start=start,
                max_duration=max_duration,
                with_audio=with_audio_latents,
                mask=mask,
            )
        return self.features_from_decoded([decoded], [prompt], with_audio_latents)[0]

    @torch.no_grad()
    def features_from_decoded(
        self,
        clips: Sequence[DecodedClip | ClipInput],
        prompts: Sequence[str],
        with_audio_latents: bool = False,
    ) -> list[Features]:
        """Encode several decoded clips; the text encoders run on the whole batch at once."""
        if len(clips) != len(prompts):
            raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
        prompts = validate_prompts(list(prompts), family=self.spec.family)
        timings: dict[str, float] = defaultdict(float)

        @contextmanager
        def timed(name: str):
            t0 = time.perf_counter()
            yield
            timings[name] += time.perf_counter() - t0

        with timed("clip_text"):
            text_f = self.clip.encode_text(prompts).float().cpu()
        # Over-long prompts are truncated as the official code does; record it per clip.
        dropped = {"clip": [c.dropped for c in self.clip.count_tokens(prompts)]}
        if self.t5 is not None:
            dropped["t5"] = [c.dropped for c in self.t5.count_tokens(prompts)]
        if self.t5 is not None:
            with timed("t5"):
                t5_f, t5_mask = self.t5.encode(prompts)
        features = []
        for i, clip in enumerate(clips):
            duration = clip_duration(clip)
            seq = self.sequence(duration)
            sync_frames = repeat_last(clip.sync_frames, seq.num_sync_frames)
            frames = normalize_sync_frames(sync_frames).unsqueeze(0)
            with timed("sync"):
                if self.t5 is not None:
                    valid = int(t5_mask[i].sum())  # padding is masked anyway; drop it
                    text, mask = t5_f[i : i + 1, :valid], t5_mask[i : i + 1, :valid]
                    sync_f = self.sync_encoder(frames, text, mask)
                else:
                    sync_f = self.sync_encoder(frames)
            clip_f = None
            if self.spec.uses_clip_frames:
                pixels = normalize_clip_frames(repeat_last(clip.clip_frames, seq.clip_seq_len))
                with timed("clip_frames"):
                    clip_f = fit_length(
                        self.clip.encode_frames(pixels).float().cpu(), seq.clip_seq_len
                    )
            latent = None
            if with_audio_latents and clip.audio is not None:
                with timed("vae_encode"):
                    latent = self.encode_audio(clip.audio, seq)
            features.append(
                Features(
                    variant=self.spec.name,
                    prompt=prompts[i],
                    duration=duration,
                    sync_f=fit_length(sync_f[0].float().cpu(), seq.sync_seq_len),
                    text_f=text_f[i],
                    clip_f=clip_f,
                    source=clip.path,
                    start=clip.start,
                    has_audio=clip.has_audio,
                    latent=latent,
                    mask_digest=getattr(clip, "mask_digest", None),
                    info={
                        "padded": clip.padded,
                        "source_fps": clip.source_fps,
                        "tokens_dropped": {k: v[i] for k, v in dropped.items()},
                    },
                )
            )
        for f in features:
            f.info["timings"] = {k: v / len(features) for k, v in timings.items()}
        return features

    @torch.no_grad()
    def encode_audio(
        self, waveform: torch.Tensor, seq: SequenceConfig | None = None
    ) -> DiagonalGaussian:
        """Mono waveform at the variant's rate -> VAE posterior over (latent_seq_len, C).

        The waveform is trimmed or zero-padded to the latent's exact sample count first, so
        the latent never comes out one frame short or long (a known upstream pitfall).
        """
        if not self.config.with_audio_encoder:
            raise RuntimeError(
                "this pipeline was built without the VAE encoder "
                "(PipelineConfig.with_audio_encoder=True)"
            )
        if waveform.dim() != 1:
            raise ValueError(f"expected a mono waveform (N,), got shape {tuple(waveform.shape)}")
        seq = seq or self.sequence(waveform.shape[0] / self.sampling_rate)
        wav = fit_length(waveform.float(), seq.num_audio_frames).to(self.config.device)
        mel = self.mel(wav.unsqueeze(0))
        post = self.vae.encode(mel.to(self.config.dtype))
        mean = fit_length(latent_to_sequence(post.mean.float())[0], seq.latent_seq_len).cpu()
        logvar = fit_length(latent_to_sequence(post.logvar.float())[0], seq.latent_seq_len).cpu()
        return DiagonalGaussian(torch.cat([mean, logvar], dim=1))

    # ---- generation -----------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, features: Features | Sequence[Features], **sampling: Unpack[SamplingOptions]
    ) -> torch.Tensor:
        """Waveforms (B, samples) float32 on the CPU, exactly the clips' duration long
        (`track_samples`; sampled at one sync window at least, then trimmed).

        The keyword options, and their defaults, are `sample_latents`'s. All clips in one call
        must share a duration (they share sequence lengths). A `negative_prompt` of None uses
        the stored empty-string features (official batch inference); a string, "" included,
        uses its CLIP features (official demo).
        """
        feats = [features] if isinstance(features, Features) else list(features)
        latents = self.sample_latents(feats, **sampling)
        duration = feats[0].duration
        wav = self.decode_latents(latents, duration)
        return fit_length(wav, track_samples(duration, self.sampling_rate), dim=1)

    @torch.no_grad()
    def sample_latents(
        self,
        features: Sequence[Features],
        *,
        negative_prompt: str | None | Sequence[str | None] = DEFAULT_NEGATIVE_PROMPT,
        seed: int | Sequence[int] = DEFAULT_SEED,
        steps: int = defaults.DEFAULT_STEPS,
        cfg: float = defaults.DEFAULT_CFG,
        progress: Callable[[int, int], None] | None = None,
        known_latents: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """The sampling half of `generate`: un-normalized latents (B, N, C) in float32.

        `known_latents` (`continue` windows of a long video): per clip None, or un-normalized
        latent frames (K, C) its sequence must start with, e.g. `continuation_prefix` of the
        previous window's latent; they are held there by flow-matching inpainting and the rest
        is generated to continue them. None (default) samples exactly as without it.
        """
        feats = list(features)
        if not feats:
            raise ValueError("no features to generate from")
        durations = {round(f.duration, 6) for f in feats}
        if len(durations) != 1:
            raise ValueError(f"clips in one batch must share a duration, got {sorted(durations)}")
        seeds = [seed] * len(feats) if isinstance(seed, int) else list(seed)
        negs = (
            [negative_prompt] * len(feats)
            if negative_prompt is None or isinstance(negative_prompt, str)
            else list(negative_prompt)
        )
        if len(seeds) != len(feats) or len(negs) != len(feats):
            raise ValueError(f"need one seed and one negative prompt per clip ({len(feats)})")

        seq = self.sequence(feats[0].duration)
        gen = self.generator
        gen.set_sequence(seq)
        device = self.config.device
        text_f = torch.stack([f.text_f for f in feats]).to(device)
        sync_f = torch.stack([fit_length(f.sync_f, seq.sync_seq_len) for f in feats]).to(device)
        if self.spec.uses_clip_frames:
            clip_f = torch.stack([fit_length(f.clip_f, seq.clip_seq_len) for f in feats]).to(device)
        else:
            clip_f = gen.empty_clip_feat.unsqueeze(0).expand(len(feats), seq.clip_seq_len, -1)
        negative_text_f = self._negative_text(negs, gen)
        return generate_latents(
            gen,
            clip_f,
            sync_f,
            text_f,
            seeds,
            negative_text_f=negative_text_f,
            config=SamplerConfig(num_steps=steps, cfg_strength=cfg),
            progress=progress,
            known_latents=known_latents,
        )

    def _negative_text(self, negs: list[str | None], gen) -> torch.Tensor | None:
        if all(n is None for n in negs):
            return None
        empty = gen.empty_string_feat.float()
        texts = [n for n in negs if n is not None]
        encoded = iter(self.clip.encode_text(validate_prompts(texts, negative=True)).float())
        rows = [empty if n is None else next(encoded).to(empty.device) for n in negs]
        return torch.stack(rows).to(self.config.device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, duration: float) -> torch.Tensor:
        """Un-normalized latents (B, N, C) -> waveforms (B, samples) trimmed to `duration`."""
        z = sequence_to_latent(latents.to(self.config.dtype))
        if z.device.type == "cpu":
            # One clip at a time: at small_16k BigVGAN's activations outgrow the CPU caches as
            # the batch grows (measured 14.3 s per clip at batch 4 against 7.3 s alone).
            wav = torch.cat([self.vocoder(self.vae.decode(one)) for one in z.split(1)])
        else:
            wav = self.vocoder(self.vae.decode(z))
        wav = wav.float()[:, 0]
        keep = min(wav.shape[-1], math.ceil(duration * self.sampling_rate))
        return wav[:, :keep].cpu()
