"""``python -m training.export``: MAE training checkpoint -> hub folder (encoder only) through the core's export.

The folder's ``pretrained_cfg`` carries the pretraining corpus' bands, bit depth and per-band mean/std (in [0, 1]
units), so ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=folder))`` and
``arctic_vit.transforms.normalize_for(model)`` preprocess new imagery exactly as in pretraining.

    python -m training.export export.checkpoint=outputs/pretrain_demo/checkpoints export.out_dir=outputs/export
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import stage_cli, write_resolved

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


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    model_name: str | None = None,
    stats: str | Path | dict[str, Any] | None = None,
    gsd_m: float | None = None,
) -> Path:
    """Write the encoder of ``checkpoint`` as a hub folder; ``pretrained_cfg`` gets the corpus bands and mean/std."""
    from arctic_vit.hub import export_folder

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    config = state.get("config", {})
    model_name = model_name or config.get("model", {}).get("encoder")
    if not model_name:
        raise ValueError(f"{path} records no model.encoder: pass export.model_name")
    if isinstance(stats, (str, Path)):
        stats = json.loads(Path(stats).read_text())
    stats = stats or state.get("stats")
    if not stats:
        raise ValueError(f"{path} holds no corpus statistics: pass export.stats=<shards>/stats.json")
    img_size = int(config.get("data", {}).get("img_size", 224))
    pretrained_cfg = {
        "bands": tuple(stats["bands"]),
        "mean": tuple(float(v) for v in stats["mean"]),
        "std": tuple(float(v) for v in stats["std"]),
        "bit_depth": int(stats["bit_depth"]),
        "input_size": (len(stats["bands"]), img_size, img_size),
    }
    if gsd_m is not None:
        pretrained_cfg["gsd_m"] = float(gsd_m)
    out = export_folder(model_name, state["model"], out_dir, pretrained_cfg=pretrained_cfg, img_size=img_size)
    LOG.info("exported %s (step %s) as %s to %s", path, state.get("step"), model_name, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv)
    options = dict(cfg["export"])
    if not options.get("checkpoint"):
        parser.error("export.checkpoint=<file or folder> is required")
    out = export_checkpoint(options.pop("checkpoint"), options.pop("out_dir"), **options)
    write_resolved(cfg, out / "export_config")
    print(out)


if __name__ == "__main__":
    main()
