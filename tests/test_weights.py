"""Weight resolution, verification, download and safe loading, with checkpoints the tests write
in the official layout (no real weights exist here)."""

import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from hub_server import COMMIT, serve_hub

from selva_core.build import load_generator
from selva_core.variants import get_spec
from selva_core.weights import (
    CATALOG,
    CorruptWeightsError,
    HubSnapshot,
    MissingWeightsError,
    UntrustedCheckpointError,
    WeightFile,
    WeightsError,
    WeightStore,
    load_state_dict,
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def torch_bytes(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def small_catalog(**files: bytes) -> dict:
    """Catalog entries shaped like the real ones, with the MD5 of the given bytes."""
    return {
        key: WeightFile(key, "jnwnlee/SelVA", f"weights/{key}.pth", md5(data), description=key)
        for key, data in files.items()
    }


def test_catalog_covers_every_variant_and_publishes_checksums():
    from selva_core.variants import VARIANTS

    for spec in VARIANTS.values():
        for key in spec.weight_keys:
            assert key in CATALOG, (spec.name, key)
    files = [e for e in CATALOG.values() if isinstance(e, WeightFile)]
    assert all(e.md5 and len(e.md5) == 32 for e in files)
    assert CATALOG["textsynch"].md5 == "ff09a6dc36148536ee4db97eba081d05"
    assert CATALOG["generator_small_44k"].alt_repo_paths == (
        "weights/generator_small_44khz_sup_5.pth",
    )


def test_real_size_checkpoint_in_official_layout_loads_strictly_and_round_trips(tmp_path):
    """A small_16k checkpoint written exactly as published (plain fp32 state dict in .pth, at
    weights/generator_small_16k_sup_5.pth) goes through the real resolution, MD5 check and
    strict load, and every tensor comes back unchanged."""
    spec = get_spec("small_16k")
    with torch.device("meta"):
        from selva_core.model.generator import Generator

        shapes = {k: v.shape for k, v in Generator(spec.generator_config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    state["latent_rot"] = torch.zeros(3)  # some files carry derived tables; they are dropped
    path = tmp_path / "weights" / "generator_small_16k_sup_5.pth"
    path.parent.mkdir()
    torch.save(state, path)
    entry = WeightFile(
        "generator_small_16k",
        "jnwnlee/SelVA",
        "weights/generator_small_16k_sup_5.pth",
        md5(path.read_bytes()),
    )
    store = WeightStore(tmp_path, allow_download=False, catalog={entry.key: entry})
    model = load_generator(spec, store)
    loaded = model.state_dict()
    assert set(loaded) == set(shapes)
    for key in (
        "joint_blocks.0.latent_block.attn.qkv.weight",
        "latent_mean",
        "final_layer.conv.bias",
    ):
        assert torch.equal(loaded[key], state[key]), key
    assert model.latent_rot.shape == (1, 250, 32, 2, 2)


def test_resolve_prefers_local_dir_and_verifies(tmp_path):
    data = torch_bytes({"w": torch.ones(2)})
    store = WeightStore(tmp_path, allow_download=False, catalog=small_catalog(enc=data))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "enc.pth").write_bytes(data)
    assert store.resolve("enc") == tmp_path / "weights" / "enc.pth"
    assert [r.status for r in store.verify(["enc"])] == ["ok"]


def test_corrupt_file_names_file_location_and_fix(tmp_path):
    store = WeightStore(tmp_path, allow_download=False, catalog=small_catalog(enc=b"good bytes"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "enc.pth").write_bytes(b"bad bytes!")
    with pytest.raises(CorruptWeightsError) as err:
        store.resolve("enc")
    msg = str(err.value)
    assert "enc.pth" in msg and "md5" in msg and "selva-ray weights download" in msg
    assert [r.status for r in store.verify(["enc"])] == ["corrupt"]


def test_missing_file_offline_names_expected_location_and_command(tmp_path):
    store = WeightStore(tmp_path, allow_download=False, cache_dir=tmp_path / "hf")
    with pytest.raises(MissingWeightsError) as err:
        store.resolve("vae_16k")
    msg = str(err.value)
    assert str(tmp_path / "ext_weights" / "v1-16.pth") in msg
    assert f"selva-ray weights download --weights-dir {tmp_path} --only vae_16k" in msg


def test_resolve_finds_files_in_the_hugging_face_cache(tmp_path):
    data = torch_bytes({"w": torch.zeros(1)})
    cache = tmp_path / "hf"
    repo = cache / "models--jnwnlee--SelVA"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / "weights" / "enc.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    store = WeightStore(
        tmp_path / "empty", allow_download=False, cache_dir=cache, catalog=small_catalog(enc=data)
    )
    assert store.resolve("enc") == target


def test_verified_digest_is_cached_by_size_and_mtime(tmp_path):
    data = b"x" * 1000
    store = WeightStore(tmp_path, allow_download=False, catalog=small_catalog(enc=data))
    path = tmp_path / "weights" / "enc.pth"
    path.parent.mkdir()
    path.write_bytes(data)
    assert store.check_file("enc", path).status == "ok"
    # Tamper with the recorded digest only: an unchanged file is not rehashed, so the cached
    # (now wrong) digest is what the check sees ...
    manifest = store._read_manifest()
    manifest[str(path.resolve())]["md5"] = "0" * 32
    store._write_manifest(manifest)
    assert store.check_file("enc", path).status == "corrupt"
    # ... and a rewritten file (new mtime) is hashed again.
    os.utime(path, ns=(1, 1))
    assert store.check_file("enc", path).status == "ok"


def test_uncertain_checksum_warns_but_loads(tmp_path, caplog):
    entry = WeightFile("g44", "jnwnlee/SelVA", "weights/g44.pth", "0" * 32, md5_uncertain=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "g44.pth").write_bytes(b"abc")
    store = WeightStore(tmp_path, allow_download=False, catalog={"g44": entry})
    assert store.resolve("g44").name == "g44.pth"
    assert "uncertain" in caplog.text


def test_download_from_hub_endpoint_verifies_and_tries_alternate_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    data = torch_bytes({"w": torch.arange(4.0)})
    entry = WeightFile(
        "g",
        "jnwnlee/SelVA",
        "weights/generator_small_44k_sup_5.pth",
        md5(data),
        alt_repo_paths=("weights/generator_small_44khz_sup_5.pth",),
    )
    files = {"jnwnlee/SelVA/weights/generator_small_44khz_sup_5.pth": data}
    with serve_hub(files) as (endpoint, requests):
        store = WeightStore(tmp_path, endpoint=endpoint, allow_download=True, catalog={"g": entry})
        path = store.resolve("g")
    assert path == tmp_path / "weights" / "generator_small_44khz_sup_5.pth"
    assert path.read_bytes() == data
    assert any("_44k_sup_5" in p for _, p in requests)  # the primary name was tried first
    assert torch.equal(load_state_dict(path)["w"], torch.arange(4.0))


def test_download_with_wrong_bytes_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    catalog = small_catalog(enc=b"the published bytes")
    with serve_hub({"jnwnlee/SelVA/weights/enc.pth": b"an error page"}) as (endpoint, _):
        store = WeightStore(tmp_path, endpoint=endpoint, allow_download=True, catalog=catalog)
        with pytest.raises(CorruptWeightsError, match="enc.pth.*md5"):
            store.resolve("enc")


def test_hub_snapshot_resolves_from_local_folder(tmp_path):
    snap = HubSnapshot("voc", "nvidia/voc", ("config.json",), optional=("a.pt", "b.pt"))
    store = WeightStore(
        tmp_path, allow_download=False, cache_dir=tmp_path / "hf", catalog={"voc": snap}
    )
    folder = tmp_path / "hub" / "nvidia" / "voc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="nvidia/voc"):
        store.resolve("voc")  # no weights file yet
    (folder / "b.pt").write_bytes(b"")
    assert store.resolve("voc") == folder


# ---- safe loading ---------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "adapter.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match="adapter.pt"):
        load_state_dict(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl.pt"
    raw.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(WeightsError):
        load_state_dict(raw)
    assert not marker.exists()


def test_legacy_and_safetensors_formats_load(tmp_path):
    from safetensors.torch import save_file

    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(legacy)["w"], torch.ones(3))
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(st))
    assert torch.equal(load_state_dict(st)["w"], torch.zeros(2))


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "cut.pth"
    data = torch_bytes({"w": torch.ones(1000)})
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="cut.pth"):
        load_state_dict(path)


def test_cli_verify_reports_missing_files_and_exits_nonzero(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "selva_ray.cli",
            "weights",
            "verify",
            "--variant",
            "small_16k",
            "--weights-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1
    assert "missing   textsynch" in out.stdout
    assert "selva-ray weights download" in out.stderr


def _online(monkeypatch, endpoint: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # read by the driver check when it runs


def test_driver_check_downloads_a_missing_file_once_and_passes(tmp_path, monkeypatch):
    from selva_ray import validate

    data = torch_bytes({"w": torch.ones(3)})
    entry = WeightFile("synchformer", "jnwnlee/SelVA", "ext_weights/sync.pth", md5(data))
    monkeypatch.setitem(CATALOG, "synchformer", entry)
    with serve_hub({"jnwnlee/SelVA/ext_weights/sync.pth": data}) as (endpoint, requests):
        _online(monkeypatch, endpoint)
        validate.check_weights("tiny", str(tmp_path), offline=False, keys=("synchformer",))
        assert (tmp_path / "ext_weights" / "sync.pth").read_bytes() == data
        n = len(requests)
        validate.check_weights("tiny", str(tmp_path), offline=False, keys=("synchformer",))
    assert len(requests) == n  # present now: no second download


def test_driver_check_names_every_file_the_hub_lacks(tmp_path, monkeypatch):
    from selva_ray import validate

    with serve_hub({}) as (endpoint, requests):
        _online(monkeypatch, endpoint)
        with pytest.raises(validate.UsageError) as caught:
            validate.check_weights(
                "small_16k",
                str(tmp_path),
                offline=False,
                keys=("generator_small_16k", "vae_16k", "synchformer"),
            )
    message = str(caught.value)
    assert "missing 3 weight file(s)" in message and "download failed" in message
    for key in ("generator_small_16k", "vae_16k", "synchformer"):
        assert key in message
    assert "--only generator_small_16k --only vae_16k --only synchformer" in message
    asked = " ".join(path for _, path in requests)
    for name in ("generator_small_16k_sup_5.pth", "v1-16.pth", "synchformer_state_dict.pth"):
        assert name in asked  # each download was tried
    assert "\n" not in message
