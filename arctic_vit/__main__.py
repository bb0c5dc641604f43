"""Command line of the core: ``python -m arctic_vit {export,export-onnx,push,cards}``.

``export`` takes the same ``export.key=value`` overrides as ``python -m training.export`` (values parsed as YAML).
``training.export`` exports this project's own pretraining checkpoints, whose corpus contract travels inside them;
``python -m arctic_vit export`` exports any other checkpoint (an official facebookresearch/mae one, a state dict,
``.safetensors``) and so needs the contract given: ``export.corpus=corpus.json``.

    python -m arctic_vit export export.checkpoint=mae_pretrain_vit_large.pth export.out_dir=hub \
        export.model_name=arctic_mae_vit_large export.corpus=shards/corpus.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .corpus import CORPUS_KEY, ContractError, CorpusContract
from .hub import export_folder, push_folder
from .onnx_export import DEFAULT_OPSET, export_onnx
from .registry_cards import main as cards_main

EXPORT_KEYS: dict[str, str] = {
    "checkpoint": "MAE training checkpoint (official facebookresearch/mae layout included) or encoder state dict: "
                  ".safetensors or a torch.load(weights_only=True)-safe file (required)",
    "out_dir": "output folder (required)",
    "model_name": "arctic model name, e.g. arctic_mae_vit_large (required)",
    "corpus": "the corpus contract: corpus.json, a JSON with a 'corpus' key, or training.pack's stats.json "
              "(required)",
    "img_size": "resolution of the weights (default: from the position embedding)",
    "gsd_m": "ground sample distance in metres, when the contract file has none",
}

ONNX_KEYS: dict[str, str] = {
    "folder": "export folder (python -m arctic_vit export / training.export) (required)",
    "out": "output .onnx file (required)",
    "opset": f"ONNX opset (default {DEFAULT_OPSET})",
    "img_size": "tile size of the graph's example input and of Deepness' tiles_size (default: the export's)",
}


def parse_overrides(items: Sequence[str], section: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """``section.key=value`` (or ``key=value``) items -> {key: YAML-parsed value}; an unknown key names the valid."""
    out: dict[str, Any] = {}
    for item in items:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not of the form {section}.key=value")
        key = dotted.strip().removeprefix(f"{section}.")
        if key not in keys:
            raise ValueError(f"unknown key {dotted!r}; valid: {', '.join(f'{section}.{k}' for k in keys)}")
        out[key] = yaml.safe_load(raw)
    return out


def read_contract(path: str | Path, gsd_m: float | None = None) -> CorpusContract:
    """A corpus contract file (or pack's stats.json: its extra ``count`` is dropped), strictly."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: corpus contract file not found")
    data = json.loads(path.read_text())
    data = data.get(CORPUS_KEY, data) if isinstance(data, dict) else data
    fields = {k: data[k] for k in ("version", "bands", "bit_depth", "mean", "std", "gsd_m", "nodata") if k in data}
    if gsd_m is not None:
        fields["gsd_m"] = gsd_m
    return CorpusContract.from_dict(fields, str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m arctic_vit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser(
        "export", help="checkpoint + corpus contract -> hub folder (model.safetensors, config.json, README.md)",
        description="keys:\n" + "\n".join(f"  export.{k}: {v}" for k, v in EXPORT_KEYS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("overrides", nargs="*", metavar="export.KEY=VALUE")

    onnx = sub.add_parser(
        "export-onnx", help="export folder -> ONNX encoder (dynamic batch, opset named, QGIS Deepness metadata)",
        description="keys:\n" + "\n".join(f"  onnx.{k}: {v}" for k, v in ONNX_KEYS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx.add_argument("overrides", nargs="*", metavar="onnx.KEY=VALUE")

    push = sub.add_parser("push", help="upload an export folder to the Hugging Face Hub (upload_folder)")
    push.add_argument("--folder", required=True)
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--revision", help="branch to upload to (created if missing); default: main")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="hub token (default: the logged-in token / HF_TOKEN)")

    sub.add_parser("cards", add_help=False,
                   help="rewrite the README tables and model_cards/ from the registry (python -m arctic_vit cards -h)")
    return parser


def run_export(overrides: Sequence[str]) -> Path:
    """Validate every key and the contract before reading the checkpoint; then export."""
    options = parse_overrides(overrides, "export", EXPORT_KEYS)
    missing = [f"export.{k}" for k in ("checkpoint", "out_dir", "model_name", "corpus") if options.get(k) is None]
    if missing:
        raise ValueError(f"missing required key(s) {missing}")
    corpus = read_contract(options["corpus"], options.get("gsd_m"))
    return export_folder(options["model_name"], options["checkpoint"], options["out_dir"], corpus=corpus,
                         img_size=options.get("img_size"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cards"]:  # its own parser (python -m arctic_vit.registry_cards)
        return cards_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        try:
            out = run_export(args.overrides)
        except (ValueError, FileNotFoundError) as err:  # ContractError is a ValueError
            parser.exit(2, f"python -m arctic_vit export: error: {err}\n")
        print(f"exported to {out}")
        return 0
    if args.command == "export-onnx":
        try:
            options = parse_overrides(args.overrides, "onnx", ONNX_KEYS)
            missing = [f"onnx.{k}" for k in ("folder", "out") if options.get(k) is None]
            if missing:
                raise ValueError(f"missing required key(s) {missing}")
            out = export_onnx(options["folder"], options["out"], opset=int(options.get("opset") or DEFAULT_OPSET),
                              img_size=options.get("img_size"))
        except (ValueError, FileNotFoundError) as err:
            parser.exit(2, f"python -m arctic_vit export-onnx: error: {err}\n")
        print(f"exported ONNX encoder to {out}")
        return 0
    result = push_folder(args.folder, args.repo_id, revision=args.revision, token=args.token, private=args.private)
    print(f"pushed {args.folder} to {result.repo_id} at commit {result.commit}")
    print(f"model.safetensors sha256 {result.sha256}")
    print(f"pin it in arctic_vit/releases.py: {result.pin_snippet()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
