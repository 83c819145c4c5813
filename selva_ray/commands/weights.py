"""`selva-ray weights list|download|verify`: manage the published checkpoints."""

from __future__ import annotations

import argparse
import sys

from selva_core.variants import VARIANTS, get_spec
from selva_core.weights import (
    CATALOG,
    WEIGHTS_DIR_ENV,
    HubSnapshot,
    WeightsError,
    WeightStore,
    hub_reachable,
)

from ..shared_settings import variant_name
from ..validate import UsageError


def catalog_entry(text: str) -> str:
    if text not in CATALOG:
        raise argparse.ArgumentTypeError(
            f"unknown weight entry {text!r}; see `selva-ray weights list`"
        )
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list, download or verify model weights",
        description=(
            "Manage published SelVA / MMAudio weights in a local weights dir "
            f"(--weights-dir, or ${WEIGHTS_DIR_ENV}, default ~/.cache/selva-ray/weights). "
            "The `tiny` variants need no weights."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="variants and the files each one needs")
    ls.set_defaults(run=_list)

    for name, helptext in (
        ("download", "fetch a variant's files from the Hugging Face hub and verify them"),
        ("verify", "check that a variant's files are present and match their MD5"),
    ):
        a = actions.add_parser(name, help=helptext, description=helptext)
        a.add_argument(
            "--variant",
            type=variant_name,
            action="append",
            default=[],
            help="variant name (repeatable)",
        )
        a.add_argument("--all", action="store_true", help="every non-tiny variant")
        a.add_argument(
            "--only",
            type=catalog_entry,
            action="append",
            default=[],
            help="a single catalog entry (repeatable)",
        )
        a.add_argument("--weights-dir", help=f"weights folder (default ${WEIGHTS_DIR_ENV})")
        if name == "download":
            a.add_argument("--token", help="Hugging Face token for gated repos (or $HF_TOKEN)")
            a.add_argument("--force", action="store_true", help="re-download present files")
            a.set_defaults(run=_download)
        else:
            a.set_defaults(run=_verify)


def _keys(args: argparse.Namespace) -> list[str]:
    names = list(VARIANTS) if args.all else args.variant
    keys: list[str] = []
    for name in names:
        keys.extend(get_spec(name).weight_keys)
    keys.extend(args.only)
    if not keys and not names:
        raise UsageError("name a --variant, --only ENTRY or --all")
    return list(dict.fromkeys(keys))


def _list(args: argparse.Namespace) -> int:
    store = WeightStore()
    for name, spec in VARIANTS.items():
        flags = f"{spec.family:8s} {spec.size:6s} {spec.mode}{' v2' if spec.v2 else ''}"
        print(f"{name:22s} {flags}")
        for key in spec.weight_keys:
            e = store.entry(key)
            where = e.repo_id if isinstance(e, HubSnapshot) else f"{e.repo_id}/{e.repo_path}"
            print(f"    {key:22s} {where}")
        if spec.is_tiny:
            print("    (random weights, no files)")
    return 0


def _download(args: argparse.Namespace) -> int:
    keys = _keys(args)
    store = WeightStore(args.weights_dir, allow_download=True, token=args.token)
    if not hub_reachable():
        missing = 0
        for key in keys:
            found = None if args.force else store.find(key)
            if found is not None:
                print(f"ok       {key:22s} {found}")
                continue
            missing += 1
            print(
                f"MISSING  {key:22s} cannot reach the hub (offline); copy it to "
                f"{store.local_path(key)}",
                file=sys.stderr,
            )
        return 1 if missing else 0
    failed = 0
    for key in keys:
        try:
            path = store.download(key, force=args.force) if args.force else store.resolve(key)
            print(f"ok       {key:22s} {path}")
        except WeightsError as exc:
            failed += 1
            print(f"FAILED   {key:22s} {exc}", file=sys.stderr)
    return 1 if failed else 0


def _verify(args: argparse.Namespace) -> int:
    store = WeightStore(args.weights_dir, allow_download=False)
    bad = 0
    for r in store.verify(_keys(args)):
        bad += r.status in ("missing", "corrupt")
        print(f"{r.status:9s} {r.key:22s} {r.path}  {r.detail}")
    if bad:
        print(
            f"{bad} file(s) missing or corrupt; fetch them with: selva-ray weights download "
            f"--weights-dir {store.root} --variant <name>",
            file=sys.stderr,
        )
    return 1 if bad else 0
