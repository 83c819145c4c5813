"""Object-mask focus: masks (images and videos) grey out the background before encoding."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image
from video_factory import square_position, write_video

from selva_core.long import iter_window_clips, plan_windows
from selva_core.pipeline import Pipeline, PipelineConfig, decode_config_for
from selva_core.variants import get_spec
from selva_core.video.decode import decode_clip
from selva_core.video.mask import (
    NEUTRAL_GREY,
    MaskMismatchError,
    MaskSettings,
    MaskSource,
    apply_mask,
)

W, H = 96, 72
SELVA = decode_config_for(get_spec("tiny"))


def write_mask_image(path, array):
    Image.fromarray(np.asarray(array, np.uint8), mode="L").save(path)
    return path


def write_mask_video(path, masks, fps=25):
    """Grey masks (T, H, W) uint8 as an H.264 video (values survive to within a few levels)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = masks.shape[2], masks.shape[1], "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "4"}
        for i, m in enumerate(masks):
            frame = av.VideoFrame.from_ndarray(np.repeat(m[..., None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def square_masks(n, width=W, height=H, margin=3):
    """Per frame: 255 on (a margin around) the moving square, 0 elsewhere."""
    masks = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        x, y, side = square_position(i, width, height)
        masks[i, max(y - margin, 0) : y + side + margin, max(x - margin, 0) : x + side + margin] = (
            255
        )
    return masks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mask")
    band = np.full((H, W), 255, np.uint8)
    _, y, side = square_position(0, W, H)
    band[y - 2 : y + side + 2] = 0  # blanks the square's whole path
    return {
        "video": write_video(d / "square.mp4", duration=3.0, fps=25, size=(W, H), pattern="square"),
        "blank_object": write_mask_image(d / "blank.png", band),
        "ones": write_mask_image(d / "ones.png", np.full((H, W), 255)),
        "wrong_size": write_mask_image(d / "small.png", np.full((H // 2, W), 255)),
        "follow": write_mask_video(d / "follow.mp4", square_masks(75)),
        "short": write_mask_video(d / "short.mp4", square_masks(25)),
    }


@pytest.fixture(scope="module")
def pipes():
    cfg = dict(generation=False)
    return {
        "tiny": Pipeline(PipelineConfig(variant="tiny", **cfg)),
        "mmaudio_tiny": Pipeline(PipelineConfig(variant="mmaudio_tiny", **cfg)),
    }


def test_mask_blanking_the_object_changes_sync_features_and_ones_do_not(pipes, files):
    pipe = pipes["tiny"]
    plain = pipe.extract_features(files["video"], "a whistle", max_duration=1.28)
    ones = pipe.extract_features(
        files["video"], "a whistle", max_duration=1.28, mask=MaskSettings(str(files["ones"]))
    )
    blank = pipe.extract_features(
        files["video"],
        "a whistle",
        max_duration=1.28,
        mask=MaskSettings(str(files["blank_object"])),
    )
    assert plain.mask_digest is None
    assert torch.equal(ones.sync_f, plain.sync_f)  # bit-equal
    assert (blank.sync_f - plain.sync_f).abs().max() > 1e-3
    assert ones.mask_digest and blank.mask_digest and ones.mask_digest != blank.mask_digest
    # the digest also covers the settings
    half = MaskSettings(str(files["blank_object"]), strength=0.5)
    assert half.digest() != MaskSettings(str(files["blank_object"])).digest()


def test_mask_paths_switch_each_stream(pipes, files):
    pipe = pipes["mmaudio_tiny"]
    video, blank = files["video"], str(files["blank_object"])
    plain = pipe.extract_features(video, "a whistle", max_duration=1.28)
    clip_only = pipe.extract_features(
        video, "a whistle", max_duration=1.28, mask=MaskSettings(blank, paths=("clip",))
    )
    sync_only = pipe.extract_features(
        video, "a whistle", max_duration=1.28, mask=MaskSettings(blank, paths=("sync",))
    )
    assert torch.equal(clip_only.sync_f, plain.sync_f)
    assert (clip_only.clip_f - plain.clip_f).abs().max() > 1e-4
    assert torch.equal(sync_only.clip_f, plain.clip_f)
    assert (sync_only.sync_f - plain.sync_f).abs().max() > 1e-3


def test_blend_greys_the_background_by_strength(files):
    clip = decode_clip(files["video"], max_duration=1.0, config=SELVA)
    half = apply_mask(clip, MaskSettings(str(files["blank_object"]), strength=0.5), config=SELVA)
    full = apply_mask(clip, MaskSettings(str(files["blank_object"])), config=SELVA)
    mid = slice(100, 124)  # rows inside the blanked band, after the 224 px squash
    top = slice(0, 40)  # rows well outside it
    assert (full.sync_frames[:, :, mid] == NEUTRAL_GREY).all()
    assert torch.equal(full.sync_frames[:, :, top], clip.sync_frames[:, :, top])
    expect = (clip.sync_frames[:, :, mid].float() + NEUTRAL_GREY) / 2
    assert (half.sync_frames[:, :, mid].float() - expect).abs().max() <= 0.5
    zero = apply_mask(clip, MaskSettings(str(files["blank_object"]), strength=0.0), config=SELVA)
    assert torch.equal(zero.sync_frames, clip.sync_frames)


def test_mask_video_follows_the_object_frame_by_frame(files):
    cfg = decode_config_for(get_spec("mmaudio_tiny"))  # keeps CLIP frames too
    windows = plan_windows(3.0, 1.28, 0.32)
    mask = MaskSettings(str(files["follow"]))
    with MaskSource(mask.path) as source:
        for w, clip in iter_window_clips(files["video"], windows, config=cfg):
            masked = apply_mask(clip, mask, source, cfg)
            for frames, plain, times, size in (
                (masked.sync_frames, clip.sync_frames, clip.sync_times, 224),
                (masked.clip_frames, clip.clip_frames, clip.clip_times, 384),
            ):
                for k in (0, len(times) // 2, len(times) - 1):
                    i = round(times[k] * 25)  # the source frame in this slot
                    x, y, side = square_position(i, W, H)
                    sx, sy = size / W, size / H
                    cy, cx = int((y + side / 2) * sy), int((x + side / 2) * sx)
                    # the object stays, the far corner of the background turns grey
                    assert torch.equal(frames[k, :, cy, cx], plain[k, :, cy, cx])
                    corner = frames[k, :, :8, :8].float()
                    assert (corner - NEUTRAL_GREY).abs().max() <= 3, (w, k)


def test_mask_that_does_not_fit_names_both_files(files):
    clip = decode_clip(files["video"], max_duration=2.0, config=SELVA)
    with pytest.raises(MaskMismatchError) as err:
        apply_mask(clip, MaskSettings(str(files["wrong_size"])), config=SELVA)
    msg = str(err.value)
    assert str(files["wrong_size"]) in msg and str(files["video"]) in msg
    assert f"{W}x{H // 2}" in msg and f"{W}x{H}" in msg
    with pytest.raises(MaskMismatchError) as err:  # a 1 s mask video for a 2 s clip
        apply_mask(clip, MaskSettings(str(files["short"])), config=SELVA)
    msg = str(err.value)
    assert str(files["short"]) in msg and str(files["video"]) in msg and "ends at 1.000 s" in msg


def test_bad_mask_settings():
    with pytest.raises(ValueError, match="mask_strength"):
        MaskSettings("m.png", strength=1.5)
    with pytest.raises(ValueError, match="mask_paths"):
        MaskSettings("m.png", paths=("audio",))
    assert MaskSettings("m.png", paths=("sync", "clip")).paths == ("clip", "sync")
