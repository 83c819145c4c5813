"""Make the bf16 golden fixtures (tests/golden_bf16/) with the official SelVA code.

Why: our bf16 path is compared with what the official code computes in bf16, not assumed to be
close to it. For every generator fixture in the fp32 golden folder (`generator_*.safetensors`,
README sections 1 and 8) this loads the fixture's `state.*` weights into the official `MMAudio`
and runs the same `in.*` inputs in bf16 the way the official `demo.py` does:

- `net.to(device, torch.bfloat16)` before `load_weights`, so every parameter and buffer is bf16,
  including `latent_mean` / `latent_std` and the timestep table `t_embed.freqs`;
- `update_seq_lengths(...)` afterwards, which rebuilds the RoPE tables in float32;
- conditions and the starting noise in bf16 (the demo's feature extractors run in bf16 and it
  draws x0 with `dtype=bf16`); the ODE wrapper gives t the latent's dtype, so the Euler state
  and t are bf16 throughout, as are the un-normalised latents.

For every TextSynch fixture (`textsynch_*.safetensors`, README section 2) it builds the official
`TextSynch` with the fixture's reduced MotionFormer (its bundled `divided_224_16x4.yaml` loaded
by OmegaConf, then VIT.EMBED_DIM / NUM_HEADS / DEPTH overridden), casts it as demo.py casts it
(`.to(device, bfloat16)` before `load_weights`) and runs it as `eval_utils.generate` does: the
frames normalised in fp32 ((u8/255 - 0.5)/0.5, (B, T, C, H, W)) then cast to bf16, the T5
features in bf16 (the demo's T5 runs in bf16), `prepend_sup_text_tokens`, then
`encode_video_with_sync`; `text_proj` of the prepended text and the fp32 fixture's debugging
tokens (`mformer_t0`, `xattn_t0`, by forward hooks) are stored too.

Only the outputs are written (as bf16, exactly as computed), with a `config` metadata field
naming the commit, torch version, the CPU, what was cast and the fp32 fixture they pair with.
They go to `<out>/<family>/`, the family of this CPU's bf16 kernels
(`selva_ray.runtime.bf16_kernel_family`: amx_bf16, avx512_bf16 or emulated): the same bf16
network computes different last bits on each, so the tests compare a machine with the outputs
made on its own family. Run it once on a machine of each family the tests must pass on.

    PYTHONPATH=<omegaconf, if not installed> python scripts/make_bf16_golden.py \
        --official /tmp/selva-official --golden /work/shared/golden --out tests/golden_bf16

`--official` is a checkout of jnwnlee/selva at 70a8589 (only `selva/model/*`, `selva/utils/
transforms.py` and `selva/ext/*` are imported). Stubs stand in where an import is missing or
broken and the path run here never calls it: `torchdiffeq` (imported by the flow-matching
module for its adaptive solver only; Euler sampling never calls it) and
`selva.ext.synchformer.astransformer` (the audio tower, built only with `audio=True`; its
vendored Hugging Face AST imports names newer transformers releases dropped). MotionFormer needs
`omegaconf` and `timm`.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from selva_ray.runtime import bf16_kernel_family

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import cpuinfo  # noqa: E402  (bench/common.py: the machine description)

EXPECTED_COMMIT = "70a8589d68f138bfdb5ebed64a948c40552a8d26"
BF16 = torch.bfloat16


def import_official(official: Path) -> tuple[type, type]:
    """The official MMAudio and FlowMatching classes from the checkout at `official`."""
    sys.path.insert(0, str(official.resolve()))
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchdiffeq")

        def odeint(*_a, **_k):
            raise RuntimeError("torchdiffeq stub: only Euler sampling is supported here")

        stub.odeint = odeint
        sys.modules["torchdiffeq"] = stub
    from selva.model.flow_matching import FlowMatching
    from selva.model.networks_generator import MMAudio

    return MMAudio, FlowMatching


def import_official_textsynch(official: Path) -> type:
    """The official TextSynch class; the audio tower's module is stubbed where it cannot import
    (TextSynch builds it only with `audio=True`, which the SelVA factory never sets)."""
    sys.path.insert(0, str(official.resolve()))
    name = "selva.ext.synchformer.astransformer"
    try:
        __import__(name)
    except ImportError:
        stub = types.ModuleType(name)

        class AST:  # noqa: D101 - placeholder, never built on the video-only path
            def __init__(self, *_a, **_k):
                raise RuntimeError("astransformer stub: the audio tower is not available")

        stub.AST = AST
        sys.modules[name] = stub
    from selva.model.networks_video_enc import TextSynch

    return TextSynch


def official_commit(official: Path) -> str:
    """The checkout's commit, or the expected one where it is an exported tree (no .git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(official), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return f"{EXPECTED_COMMIT} (exported tree, not verified)"


def load_groups(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
            prefix, _, name = key.partition(".")
            groups.setdefault(prefix, {})[name] = f.get_tensor(key)
    return config, groups


@torch.inference_mode()
def run_generator(mmaudio: type, flow_matching: type, cfg: dict, groups: dict) -> dict:
    """The official generator's outputs in bf16 for one fp32 fixture (names as its `out.*`)."""
    params = inspect.signature(mmaudio.__init__).parameters
    kwargs = {k: cfg[k] for k in params if k in cfg}
    torch.manual_seed(cfg["seed"])
    net = mmaudio(**kwargs).to("cpu", BF16).eval()  # demo.py: .to(device, dtype) first
    net.load_weights(dict(groups["state"]))
    net.update_seq_lengths(cfg["latent_seq_len"], cfg["clip_seq_len"], cfg["sync_seq_len"])
    if cfg.get("v2"):
        # The official v2 factory sets these from the constructor; check they match the fixture.
        emb = net.t_embed.mlp[0].in_features
        assert emb == cfg.get("t_embed_frequency_embedding_size", emb)
    i = {k: v.to(BF16) if v.is_floating_point() else v for k, v in groups["in"].items()}
    i["t"] = groups["in"]["t"].to(BF16)  # the ODE wrapper's t has the latent's dtype
    out: dict[str, torch.Tensor] = {}
    out["flow"] = net(i["latent"], i["clip_f"], i["sync_f"], i["text_f"], i["t"])
    cond = net.preprocess_conditions(i["clip_f"], i["sync_f"], i["text_f"])
    for name in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
        out[f"cond_{name}"] = getattr(cond, name)
    batch = i["latent"].shape[0]
    neg = net.get_empty_conditions(batch, negative_text_features=i["neg_text_f"])
    out["flow_uncond_negtext"] = net.predict_flow(i["latent"], i["t"], neg)

    fm = flow_matching(min_sigma=0, inference_mode="euler", num_steps=cfg["num_steps"])
    w = cfg["cfg_strength"]
    for name, empty in (("negtext", neg), ("emptystr", net.get_empty_conditions(batch))):
        x = fm.to_data(lambda t, x, e=empty: net.ode_wrapper(t, x, cond, e, w), i["x0"])
        out[f"sample_{name}"] = x
        if name == "negtext":
            out["sample_negtext_unnorm"] = net.unnormalize(x.clone())
    for name, value in out.items():
        assert value.dtype == BF16, f"{name} came out {value.dtype}, not bf16"
    return {k: v.contiguous().clone() for k, v in out.items()}


def build_textsynch(textsynch: type, cfg: dict) -> torch.nn.Module:
    """The official TextSynch with the fixture's reduced MotionFormer (README section 2): the
    bundled yaml as OmegaConf loads it, with VIT.EMBED_DIM / NUM_HEADS / DEPTH overridden."""
    import omegaconf

    plain_load = omegaconf.OmegaConf.load

    def reduced_load(path, *a, **k):
        conf = plain_load(path, *a, **k)
        if str(path).endswith("divided_224_16x4.yaml"):
            conf.VIT.EMBED_DIM = cfg["embed_dim"]
            conf.VIT.NUM_HEADS = cfg["num_heads"]
            conf.VIT.DEPTH = cfg["depth"]
        return conf

    torch.manual_seed(cfg["seed"])
    omegaconf.OmegaConf.load = reduced_load
    try:
        net = textsynch(
            text_dim=cfg["text_dim"],
            video_seq_len=cfg["sync_seq_len"],
            max_text_seq_len=512,
            num_sup_text_tokens=cfg["num_sup_text_tokens"],
            sync_batch_size_multiplier=cfg["sync_batch_size_multiplier"],
            xattn_depth=cfg["xattn_depth"],
        )
    finally:
        omegaconf.OmegaConf.load = plain_load
    assert net.vfeat_extractor.embed_dim == cfg["embed_dim"], "MotionFormer size not overridden"
    return net


@torch.inference_mode()
def run_textsynch(textsynch: type, cfg: dict, groups: dict) -> dict:
    """The official TextSynch's outputs in bf16 for one fp32 fixture, names as its `out.*`: the
    debugging `mformer_t0` / `xattn_t0` (temporal slot 0 of every window, CLS dropped, windows
    item-major) come from forward hooks as in the fp32 fixture."""
    net = build_textsynch(textsynch, cfg).to("cpu", BF16).eval()  # demo.py: .to first
    net.load_weights(dict(groups["state"]))
    patches = (cfg["img_size"] // cfg["patch_size"]) ** 2
    grabbed: dict[str, list[torch.Tensor]] = {"mformer_t0": [], "xattn_t0": []}

    def grab(name: str):
        return lambda _m, _a, output: grabbed[name].append(output[:, :patches])

    hooks = [
        net.vfeat_extractor.norm.register_forward_hook(grab("mformer_t0")),
        net.synch_text_cross_blocks[-1].register_forward_hook(grab("xattn_t0")),
    ]
    i = groups["in"]
    frames = ((i["frames_u8"].float() * (1 / 255) - 0.5) / 0.5).to(BF16)  # sync transform, fp32
    try:
        text_f, mask = net.prepend_sup_text_tokens(i["text_f"].to(BF16), i["text_mask"])
        out = {
            "text_f_with_sup": text_f,
            "text_proj": net.text_proj(text_f),
            "sync_f": net.encode_video_with_sync(frames, text_f, mask),
        }
    finally:
        for h in hooks:
            h.remove()
    out |= {name: torch.cat(parts) for name, parts in grabbed.items()}
    assert torch.equal(mask, groups["out"]["text_mask_with_sup"])
    for name, value in out.items():
        assert value.dtype == BF16, f"{name} came out {value.dtype}, not bf16"
        assert value.shape == groups["out"][name].shape, name
    return {k: v.contiguous().clone() for k, v in out.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(dest: Path, outputs: dict[str, torch.Tensor], meta: dict) -> None:
    save_file({f"out.{k}": v for k, v in outputs.items()}, str(dest), {"config": json.dumps(meta)})
    print(f"{dest}: {len(outputs)} outputs, {dest.stat().st_size:,} bytes")


def provenance(src: Path, commit: str, module: str) -> dict:
    return {
        "source_fixture": src.name,
        "source_sha256": sha256(src),
        "official_repo": "jnwnlee/selva",
        "official_commit": commit,
        "module": module,
        "torch": torch.__version__,
        "device": "cpu",
        "cpu": cpuinfo()[0],
        "bf16_kernels": bf16_kernel_family(),
        "threads": 1,
    }


def make_generator(official: Path, golden: Path, out: Path, commit: str) -> int:
    mmaudio, flow_matching = import_official(official)
    sources = sorted(golden.glob("generator_*.safetensors"))
    for src in sources:
        cfg, groups = load_groups(src)
        outputs = run_generator(mmaudio, flow_matching, cfg, groups)
        meta = provenance(src, commit, "selva.model.networks_generator.MMAudio") | {
            "precision": "bf16 as demo.py: net.to(device, bfloat16) then load_weights; "
            "update_seq_lengths rebuilds latent_rot/clip_rot in fp32",
            "cast_to_bf16": "all parameters and buffers (incl. latent_mean/std, t_embed.freqs); "
            "in.* latent, clip_f, sync_f, text_f, neg_text_f, x0 and t",
            "kept_fp32": "latent_rot, clip_rot (rebuilt after the cast); official RoPE math; "
            "the Euler time grid (linspace), whose t is cast to bf16 by ode_wrapper",
            "sampling": f"FlowMatching euler, {cfg['num_steps']} steps, cfg {cfg['cfg_strength']}, "
            "two-pass CFG via ode_wrapper; Euler state bf16",
            "fixture_config": cfg,
        }
        write(out / src.name.replace(".safetensors", "_bf16.safetensors"), outputs, meta)
    return len(sources)


def make_textsynch(official: Path, golden: Path, out: Path, commit: str) -> int:
    textsynch = import_official_textsynch(official)
    sources = sorted(golden.glob("textsynch_*.safetensors"))
    for src in sources:
        cfg, groups = load_groups(src)
        outputs = run_textsynch(textsynch, cfg, groups)
        meta = provenance(src, commit, "selva.model.networks_video_enc.TextSynch") | {
            "precision": "bf16 as demo.py: net.to(device, bfloat16) then load_weights; "
            "inputs as eval_utils.generate: sync frames .to(net dtype), T5 features bf16",
            "cast_to_bf16": "all parameters and buffers; in.frames_u8 after fp32 normalisation "
            "((u8 * (1/255) - 0.5) / 0.5); in.text_f",
            "kept_fp32": "nothing (no derived tables on this path)",
            "motionformer": "divided_224_16x4.yaml via OmegaConf.load, VIT.EMBED_DIM/NUM_HEADS/"
            "DEPTH overridden from the fixture config",
            "run": "prepend_sup_text_tokens, text_proj, encode_video_with_sync "
            f"(sync_batch_size_multiplier {cfg['sync_batch_size_multiplier']})",
            "fixture_config": cfg,
        }
        write(out / src.name.replace(".safetensors", "_bf16.safetensors"), outputs, meta)
    return len(sources)


MAKERS = {"generator": make_generator, "textsynch": make_textsynch}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="jnwnlee/selva checkout")
    ap.add_argument("--golden", type=Path, required=True, help="the fp32 fixture folder")
    ap.add_argument("--out", type=Path, default=Path("tests/golden_bf16"))
    ap.add_argument("--only", choices=sorted(MAKERS), help="one module's fixtures (default all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the most reproducible reduction order on CPU
    commit = official_commit(args.official)
    out = args.out / bf16_kernel_family()
    out.mkdir(parents=True, exist_ok=True)
    for name, make in MAKERS.items():
        if args.only not in (None, name):
            continue
        if not make(args.official, args.golden, out, commit):
            print(f"no {name}_*.safetensors in {args.golden}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
