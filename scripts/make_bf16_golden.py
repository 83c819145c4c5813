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

Only the outputs are written (as bf16, exactly as computed), with a `config` metadata field
naming the commit, torch version, what was cast and the fp32 fixture they pair with.

    python scripts/make_bf16_golden.py --official /tmp/selva-official \
        --golden /work/shared/golden --out tests/golden_bf16

`--official` is a checkout of jnwnlee/selva at 70a8589 (only `selva/model/*` and
`selva/ext/rotary_embeddings.py` are imported). `torchdiffeq`, imported by the official
flow-matching module for its adaptive solver only, is replaced by a stub when it is missing:
Euler sampling never calls it.
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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="jnwnlee/selva checkout")
    ap.add_argument("--golden", type=Path, required=True, help="the fp32 fixture folder")
    ap.add_argument("--out", type=Path, default=Path("tests/golden_bf16"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the most reproducible reduction order on CPU
    mmaudio, flow_matching = import_official(args.official)
    commit = official_commit(args.official)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = sorted(args.golden.glob("generator_*.safetensors"))
    if not sources:
        print(f"no generator_*.safetensors in {args.golden}", file=sys.stderr)
        return 2
    for src in sources:
        cfg, groups = load_groups(src)
        outputs = run_generator(mmaudio, flow_matching, cfg, groups)
        meta = {
            "source_fixture": src.name,
            "source_sha256": sha256(src),
            "official_repo": "jnwnlee/selva",
            "official_commit": commit,
            "module": "selva.model.networks_generator.MMAudio",
            "torch": torch.__version__,
            "device": "cpu",
            "threads": 1,
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
        dest = args.out / src.name.replace(".safetensors", "_bf16.safetensors")
        save_file(
            {f"out.{k}": v for k, v in outputs.items()}, str(dest), {"config": json.dumps(meta)}
        )
        print(f"{dest}: {len(outputs)} outputs, {dest.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
