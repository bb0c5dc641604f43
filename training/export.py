"""``python -m training.export``: MAE training checkpoint -> hub folder (encoder only) through the core's export.

The corpus contract (bands, bit depth, per-band mean/std in [0, 1] units, GSD, nodata) is read from the checkpoint,
where ``training.pretrain`` stored it from the shard folder's ``corpus.json``, and handed to
``arctic_vit.hub.export_folder(corpus=...)`` unchanged: the folder's ``pretrained_cfg`` / ``config.json`` carry it,
so ``arctic_vit.normalize_for(model)`` preprocesses new imagery exactly as in pretraining.

    python -m training.export export.checkpoint=outputs/pretrain_demo/checkpoints export.out_dir=outputs/export
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from arctic_vit.config import stage_cli, write_resolved
from arctic_vit.corpus import ContractError, CorpusContract
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.schemas import ExportConfig

LOG = logging.getLogger("training.export")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain_export.yaml"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest ``checkpoint-*.pt`` of a folder."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"no checkpoint-*.pt in {path} or {path / 'checkpoints'}")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def checkpoint_contract(state: dict, path: Path) -> CorpusContract:
    """The corpus contract a training checkpoint carries; errors name the file."""
    if "corpus" not in state:
        raise ContractError(f"{path}: no corpus contract (written by an older training.pretrain): re-run pretraining "
                            "on shards packed by this version, or export with arctic_vit.export_folder(corpus=...)")
    return CorpusContract.from_dict(state["corpus"], f"{path} ['corpus']")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, model_name: str | None = None) -> Path:
    """Write the encoder of ``checkpoint`` as a hub folder carrying the checkpoint's corpus contract."""
    from arctic_vit.hub import export_folder

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    contract = checkpoint_contract(state, path)
    config = state.get("config", {})
    model_name = model_name or config.get("model", {}).get("encoder")
    if not model_name:
        raise ValueError(f"{path} records no model.encoder: pass export.model_name")
    img_size = int(config.get("data", {}).get("img_size", 224))
    out = export_folder(model_name, state["model"], out_dir, corpus=contract, img_size=img_size)
    LOG.info("exported %s (step %s) as %s to %s", path, state.get("step"), model_name, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv, schema=ExportConfig,
                            prog="python -m training.export")
    options = cfg.export.model_dump()
    if not options.get("checkpoint"):
        parser.error("export.checkpoint=<file or folder> is required")
    out = export_checkpoint(options.pop("checkpoint"), options.pop("out_dir"), **options)
    write_resolved(cfg, out / "export_config")
    print(out)


if __name__ == "__main__":
    main()
