"""Frozen-encoder probes: how transferable are an encoder's features, measured without finetuning.

    python -m evaluation.probes --archive outputs/probe_archive --chip-px 128 --seeds 0 1 2 3 4 \\
        --encoder curated=outputs/demo/export/mae_curated --encoder random_init=none --out outputs/probes

Protocol (``run_probes``):
- data: every chip of a labelled synthetic archive (``evaluation.probe_data``), split by scene into train/test
  (whole scenes on one side); labels: the chip's scene type (majority of its pixels) and the rare-class masks;
- preprocessing: one for every encoder, the per-band z-score of the training split on the encoders' shared DN scale
  (their corpus contract's bands and bit depth must agree);
- features: the frozen encoder's patch tokens (``forward_features`` without prefix tokens), mean-pooled per chip;
- (a) linear probe: standardised pooled features -> ``LogisticRegression`` (class-balanced, ``LINEAR_C``); (b) kNN
  (k = 20, cosine) on the same standardised features; both scored by balanced accuracy and macro F1 over the scene
  types present in both splits; (c) linear segmentation probe: multinomial logistic regression (a 1 x 1 conv) on
  standardised patch tokens, class-balanced, the same L2, at most ``SEG_MAX_ITER`` L-BFGS iterations;
  target per 16 x 16 patch = its majority rare class (the foreground class with most pixels if it covers
  >= ``PATCH_FOREGROUND_SHARE`` of the patch, else background), scored by foreground mean F1 over patches
  (``evaluation.metrics``: the scored class set is fixed from the test split's ground truth);
- seeds: each seed draws the probe's training subsample (``TRAIN_SUBSAMPLE`` of the training chips, capped at
  ``MAX_TRAIN_PATCHES`` patches for (c)); every encoder, the random-init reference (``None``,
  one network drawn with ``RANDOM_INIT_SEED``) included, is one fixed network, so its features are computed once;
- intervals: hierarchical bootstrap over seeds x test scenes, paired across encoders
  (``evaluation.metrics.hierarchical_bootstrap``); a class absent from a split is listed, never averaged in.
The result (``probes.json`` in ``out_dir``): per encoder and metric the mean over seeds, per-seed values and 95 %
interval; paired differences (with intervals) of every encoder against the random-init reference and between the
others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from arctic_vit.corpus import CorpusContract
from evaluation.backbones import ZSCORE
from evaluation.metrics import counts_statistic, f1_iou, foreground_mean, hierarchical_bootstrap, strict_json
from evaluation.probe_data import (
    ProbeChips,
    cut_chips,
    describe_split,
    encode,
    export_contract,
    load_encoder,
    patch_targets,
    split_by_scene,
    zscore_normalizer,
)

log = logging.getLogger(__name__)
RESULT_NAME = "probes.json"
KNN_K = 20
TRAIN_SUBSAMPLE = 0.8
MAX_TRAIN_PATCHES = 6000
PATCH_FOREGROUND_SHARE = 0.25
PATCH = 16
LINEAR_C = 0.1
"""Inverse L2 strength of the scene-type linear probe (on standardised features), fixed for every encoder."""
RANDOM_INIT_SEED = 0
"""The random-init reference is one network (like each pretrained encoder); seeds vary the probes."""
NULL_NAME = "random_init_second_draw"
KNN_TEMPERATURE = 0.07
"""kNN votes are weighted by exp(cosine similarity / T) (the SSL kNN protocol of Wu et al. 2018 / DINO), so a small
class can win against the many neighbours of a large one."""
SEG_MAX_ITER = 100
METRICS = {
    "linear_balanced_accuracy": "scene type, linear probe: balanced accuracy",
    "linear_macro_f1": "scene type, linear probe: macro F1",
    "knn_balanced_accuracy": f"scene type, kNN (k={KNN_K}, cosine): balanced accuracy",
    "knn_macro_f1": f"scene type, kNN (k={KNN_K}, cosine): macro F1",
    "segmentation_foreground_f1": "rare classes, linear patch probe: foreground mean F1 (16 px patches)",
}


def classification_scores(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    """truth: (n,) class indices 0..n_classes-1 (every class is scored), pred: (n,) indices, those >= n_classes
    (classes seen in training only) count as misses -> (balanced accuracy, macro F1); NaN when a scored class has
    no sample (the class set is fixed, never averaged over fewer)."""
    width = n_classes + 1
    pred = np.minimum(pred, n_classes)
    confusion = np.bincount(truth * width + pred, minlength=n_classes * width).reshape(n_classes, width)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1)
    if (support == 0).any():
        return float("nan"), float("nan")
    fp = confusion[:, :n_classes].sum(0) - tp
    return float(np.mean(tp / support)), float(np.mean(2 * tp / (2 * tp + fp + (support - tp))))


def _classification_statistic(which: int, n_classes: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """A bootstrap statistic over an item (n_test, 2) [truth, prediction]: 0 balanced accuracy, 1 macro F1."""
    return lambda item, index: classification_scores(item[index, 0], item[index, 1], n_classes)[which]


def _similarity_weights(distances: np.ndarray) -> np.ndarray:
    """Cosine distances -> vote weights exp((1 - d) / T) (scaled by exp(-1 / T), which no vote depends on)."""
    return np.exp(-distances / KNN_TEMPERATURE)


def _subsample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(n, size=max(1, round(TRAIN_SUBSAMPLE * n)), replace=False))


def scene_type_probes(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      seed: int) -> dict[str, np.ndarray]:
    """Pooled features train (n, D) with class ids (n,), test (m, D) -> test predictions (m,) of the linear probe
    and of kNN, trained on the seed's subsample."""
    pick = _subsample(len(train_x), seed)
    scaler = StandardScaler().fit(train_x[pick])
    xs, ts = scaler.transform(train_x[pick]), scaler.transform(test_x)
    linear = LogisticRegression(C=LINEAR_C, max_iter=1000, class_weight="balanced", random_state=seed)
    linear.fit(xs, train_y[pick])
    knn = KNeighborsClassifier(n_neighbors=min(KNN_K, len(pick)), metric="cosine", algorithm="brute",
                               weights=_similarity_weights)
    knn.fit(xs, train_y[pick])
    return {"linear": linear.predict(ts), "knn": knn.predict(ts)}


def segmentation_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                       seed: int) -> np.ndarray:
    """Patch tokens train (n, L, D) with targets (n, L), test (m, L, D) -> test predictions (m, L).

    Multinomial logistic regression per patch (a 1 x 1 convolution over the patch grid) on standardised tokens:
    class-balanced cross-entropy + the scene probe's L2 (``LINEAR_C``), full-batch L-BFGS for at most
    ``SEG_MAX_ITER`` iterations (scikit-learn's solver, 4x faster here in torch), on the seed's chip subsample: all
    its foreground patches plus background patches up to ``MAX_TRAIN_PATCHES``.
    """
    pick = _subsample(len(train_x), seed)
    x = train_x[pick].reshape(-1, train_x.shape[-1])
    y = train_y[pick].ravel()
    rng = np.random.default_rng([seed, 2])
    foreground, background = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    room = max(MAX_TRAIN_PATCHES - len(foreground), min(len(background), MAX_TRAIN_PATCHES // 4))
    keep = np.concatenate([foreground, rng.choice(background, size=min(room, len(background)), replace=False)])
    scaler = StandardScaler().fit(x[keep])
    inputs = torch.from_numpy(scaler.transform(x[keep])).float()
    targets = torch.from_numpy(y[keep]).long()
    present = torch.bincount(targets, minlength=n_classes).float()
    weight = torch.where(present > 0, present.sum() / (present.clamp(min=1) * (present > 0).sum()), 0.0)
    layer = torch.nn.Linear(inputs.shape[1], n_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=SEG_MAX_ITER, history_size=20,
                                  line_search_fn="strong_wolfe")
    l2 = 1.0 / (2.0 * LINEAR_C * len(targets))  # scikit-learn's C, per sample

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(inputs), targets, weight=weight)
        loss = loss + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        test = torch.from_numpy(scaler.transform(test_x.reshape(-1, test_x.shape[-1]))).float()
        return layer(test).argmax(1).numpy().reshape(test_x.shape[:2])


def patch_counts(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """truth, pred: (n, L) patch classes -> (n, K, 3) [tp, fp, fn] per chip and class."""
    out = np.zeros((len(truth), n_classes, 3), np.int64)
    for c in range(n_classes):
        t, p = truth == c, pred == c
        out[:, c] = np.stack([(t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)], axis=1)
    return out


def segmentation_classes(train: np.ndarray, test: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Patch targets of both splits -> (K,) bool scored foreground classes (present in both), and the report of
    the classes left out."""
    in_train = np.isin(np.arange(len(names)), train)
    in_test = np.isin(np.arange(len(names)), test)
    scored = in_train & in_test
    scored[0] = False
    foreground = range(1, len(names))
    return scored, {
        "segmentation_scored": [names[c] for c in np.flatnonzero(scored)],
        "segmentation_absent_from_train": [names[c] for c in foreground if in_test[c] and not in_train[c]],
        "segmentation_absent_from_test": [names[c] for c in foreground if in_train[c] and not in_test[c]],
    }


def _shared_contract(encoders: dict[str, Path | None]) -> tuple[CorpusContract, Path]:
    """The bands / bit depth every exported encoder expects (they must agree) and one export to copy the
    architecture of the random-init reference from."""
    exports = {name: Path(path) for name, path in encoders.items() if path is not None}
    if not exports:
        raise ValueError("probes need at least one exported encoder folder (the random-init reference takes its "
                         "architecture and DN scale from one)")
    contracts = {name: export_contract(path) for name, path in exports.items()}
    first_name, first = next(iter(contracts.items()))
    for name, contract in contracts.items():
        if (contract.bands, contract.bit_depth) != (first.bands, first.bit_depth):
            raise ValueError(f"encoders {first_name!r} and {name!r} expect different data: bands/bit depth "
                             f"{first.bands}/{first.bit_depth} vs {contract.bands}/{contract.bit_depth}")
    return first, exports[first_name]


@dataclass
class ProbeTask:
    """The labelled probe data, split by scene, with the fixed class sets every encoder is scored on."""

    chips: ProbeChips
    train: np.ndarray  # chip indices
    test: np.ndarray
    scored_test: np.ndarray  # test chips whose scene type also occurs in training
    scene_types: list[str]  # scored scene types (present in both splits); ids 0..n-1, train-only types after them
    y_train: np.ndarray
    y_test: np.ndarray  # (len(scored_test),)
    targets: np.ndarray | None  # (N, L) patch classes
    scored_seg: np.ndarray | None  # (K,) bool
    report: dict  # classes left out of each score

    @classmethod
    def build(cls, chips: ProbeChips, archive: Path) -> ProbeTask:
        train, test = split_by_scene(chips)
        types_train, types_test = set(chips.scene_types[train].tolist()), set(chips.scene_types[test].tolist())
        scored = sorted(types_train & types_test)
        if len(scored) < 2:
            raise ValueError(f"probe archive {archive}: fewer than 2 scene types in both splits (train "
                             f"{sorted(types_train)}, test {sorted(types_test)}); use more scenes")
        index = {t: i for i, t in enumerate(scored + sorted(types_train - types_test))}
        scored_test = test[np.isin(chips.scene_types[test], scored)]
        report = {"scene_types_scored": scored, "scene_types_absent_from_test": sorted(types_train - types_test),
                  "scene_types_absent_from_train": sorted(types_test - types_train),
                  "test_chips_left_out": int(len(test) - len(scored_test))}
        targets = scored_seg = None
        if chips.masks is not None:
            targets = patch_targets(chips.masks, PATCH, PATCH_FOREGROUND_SHARE)
            scored_seg, seg_report = segmentation_classes(targets[train], targets[test], chips.class_names)
            report |= seg_report
        return cls(chips, train, test, scored_test, scored, np.array([index[t] for t in chips.scene_types[train]]),
                   np.array([index[t] for t in chips.scene_types[scored_test]]), targets, scored_seg, report)

    def metrics(self) -> list[str]:
        return [m for m in METRICS if self.targets is not None or not m.startswith("segmentation")]

    def statistic(self, metric: str) -> tuple[Callable[[np.ndarray, np.ndarray], float], np.ndarray]:
        """The bootstrap statistic of ``metric`` and the scene of each item row."""
        if metric == "segmentation_foreground_f1":
            return counts_statistic(self.scored_seg), self.chips.scenes[self.test]
        which = 0 if metric.endswith("balanced_accuracy") else 1
        return _classification_statistic(which, len(self.scene_types)), self.chips.scenes[self.scored_test]


def probe_features(task: ProbeTask, pooled: np.ndarray, patches: np.ndarray, seed: int) -> dict[str, tuple]:
    """One encoder's features (pooled (N, D), patches (N, L, D)), one seed -> metric -> (bootstrap item, value)."""
    out = {}
    n_types = len(task.scene_types)
    predictions = scene_type_probes(pooled[task.train], task.y_train, pooled[task.scored_test], seed)
    for probe, pred in predictions.items():
        item = np.stack([task.y_test, pred], axis=1)
        accuracy, f1 = classification_scores(task.y_test, pred, n_types)
        out[f"{probe}_balanced_accuracy"], out[f"{probe}_macro_f1"] = (item, accuracy), (item, f1)
    if task.targets is not None:
        n_classes = len(task.chips.class_names)
        pred = segmentation_probe(patches[task.train], task.targets[task.train], patches[task.test], n_classes, seed)
        counts = patch_counts(task.targets[task.test], pred, n_classes)
        out["segmentation_foreground_f1"] = (counts, foreground_mean(f1_iou(counts.sum(0))[0], task.scored_seg))
    return out


def _summaries(per_seed: dict[str, list[float]], boot: dict[str, dict]) -> dict[str, dict]:
    return {name: {"mean": float(np.mean(values)) if np.isfinite(values).all() else None,
                   "per_seed": [float(v) for v in values],
                   "ci95": [boot[name]["ci_low"], boot[name]["ci_high"]],
                   "undefined_resamples": boot[name]["undefined"]}
            for name, values in per_seed.items()}


def _difference(items: dict[str, list], a: str, b: str, statistic, groups: np.ndarray, n_boot: int) -> dict:
    """Paired bootstrap of ``a - b``."""
    pair = hierarchical_bootstrap({a: items[a], b: items[b]}, statistic, groups, reference=b, n_boot=n_boot)
    return {"diff": pair[a]["diff"], "ci95": [pair[a]["diff_ci_low"], pair[a]["diff_ci_high"]],
            "undefined_resamples": pair[a]["undefined"]}


def run_probes(encoders: dict[str, Path | None], archive: Path, out_dir: Path, seeds: Sequence[int], chip_px: int,
               device: str = "cpu", *, max_chips_per_scene: int | None = None, n_boot: int = 1000) -> dict:
    """Probe every encoder (name -> export folder, None = random init of the same architecture) on ``archive``'s
    chips -> the JSON-ready result (also written to ``out_dir / RESULT_NAME``); see the module docstring.

    With a random-init reference, a second random network (``NULL_NAME``) is probed too: its difference to the
    reference is the null, the size of a difference between two networks of the same distribution, which the
    intervals (seeds x test scenes) do not cover.
    """
    start = time.time()
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if chip_px % PATCH:
        raise ValueError(f"chip_px must be a multiple of the {PATCH} px patch, got {chip_px}")
    random_refs = [name for name, path in encoders.items() if path is None]
    if len(random_refs) > 1:
        raise ValueError(f"one random-init reference at most, got {random_refs}")
    if NULL_NAME in encoders:
        raise ValueError(f"encoder name {NULL_NAME!r} is reserved for the null draw")
    reference = random_refs[0] if random_refs else None
    contract, architecture = _shared_contract(encoders)

    chips = cut_chips(archive, chip_px, max_chips_per_scene)
    task = ProbeTask.build(chips, archive)
    normalize = zscore_normalizer(chips.images[task.train], contract)
    runs = [(name, path, RANDOM_INIT_SEED) for name, path in encoders.items()]
    if reference is not None:
        runs.append((NULL_NAME, None, RANDOM_INIT_SEED + 1))
    items: dict[str, dict[str, list]] = {m: {} for m in task.metrics()}
    per_seed: dict[str, dict[str, list[float]]] = {m: {} for m in task.metrics()}
    for e, (name, path, init_seed) in enumerate(runs):
        tick = time.time()
        model = load_encoder(None if path is None else Path(path), architecture, chip_px, init_seed)
        pooled, patches = encode(model, normalize, chips.images, device=device)
        for seed in seeds:
            for metric, (item, value) in probe_features(task, pooled, patches, seed).items():
                items[metric].setdefault(name, []).append(item)
                per_seed[metric].setdefault(name, []).append(value)
        log.info("probes: encoder %d/%d %s: %d chips x %d seeds, linear bal. acc %.3f, kNN %.3f (%.1f s)", e + 1,
                 len(runs), name, len(chips), len(seeds), np.mean(per_seed["linear_balanced_accuracy"][name]),
                 np.mean(per_seed["knn_balanced_accuracy"][name]), time.time() - tick)

    metrics, differences, null = {}, {}, {}
    others = [name for name in encoders if name != reference]
    for metric in task.metrics():
        statistic, groups = task.statistic(metric)
        shown = {name: items[metric][name] for name in encoders}
        boot = hierarchical_bootstrap(shown, statistic, groups, reference=reference, n_boot=n_boot)
        metrics[metric] = _summaries({name: per_seed[metric][name] for name in encoders}, boot)
        pairs = [(name, reference) for name in others if reference is not None]
        pairs += list(itertools.combinations(others, 2))
        differences[metric] = {f"{a} - {b}": _difference(items[metric], a, b, statistic, groups, n_boot)
                               for a, b in pairs}
        if reference is not None:
            null[metric] = _difference(items[metric], NULL_NAME, reference, statistic, groups, n_boot)
        log.info("probes: bootstrap of %s done (%.0f s)", metric, time.time() - start)

    result = {
        "metrics": {m: METRICS[m] for m in metrics},
        "encoders": {name: {"weights": None if path is None else str(path),
                            **{m: metrics[m][name] for m in metrics}} for name, path in encoders.items()},
        "differences": differences,
        "null_difference": {"what": f"{NULL_NAME} - {reference}: two random-init networks of one distribution; "
                                    "differences between encoders smaller than this are within network-draw noise",
                            **null} if reference is not None else None,
        "reference": reference,
        "classes": task.report,
        "protocol": {
            "archive": str(archive), "chip_px": chip_px, "seeds": seeds, "device": device,
            "split": describe_split(chips, task.train, task.test), "preprocessing": ZSCORE + " (every encoder)",
            "corpus_bands": list(contract.bands), "bit_depth": contract.bit_depth,
            "train_subsample": TRAIN_SUBSAMPLE, "linear_c": LINEAR_C, "knn_k": KNN_K,
            "knn_temperature": KNN_TEMPERATURE, "segmentation_max_iter": SEG_MAX_ITER,
            "max_train_patches": MAX_TRAIN_PATCHES, "patch_foreground_share": PATCH_FOREGROUND_SHARE,
            "n_boot": n_boot,
            "intervals": "95 % hierarchical bootstrap over seeds x test scenes, paired across encoders; resamples "
                         "missing a scored class are undefined (counted)",
        },
        "seconds": round(time.time() - start, 1),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = strict_json(result)
    (out_dir / RESULT_NAME).write_text(json.dumps(result, indent=2) + "\n")
    log.info("probes: %d encoders x %d seeds on %d chips in %.0f s -> %s", len(runs), len(seeds), len(chips),
             time.time() - start, out_dir / RESULT_NAME)
    return result


def _cell(row: dict) -> str:
    if row["mean"] is None:
        return "undefined"
    low, high = row["ci95"]
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{row['mean']:.3f}{interval}"


def probes_markdown(result: dict) -> str:
    """The result as Markdown: per metric and encoder the mean over seeds [95 % interval], then the paired
    differences with their intervals, the null (two random-init draws) and the classes left out."""
    metrics = list(result["metrics"])
    lines = ["| encoder | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in result["encoders"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[m]) for m in metrics) + " |")
    pairs = list(next(iter(result["differences"].values()), {}))
    if pairs:
        lines += ["", "| difference | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        rows = [(pair, {m: result["differences"][m][pair] for m in metrics}) for pair in pairs]
        if result.get("null_difference"):
            rows.append((f"null: {NULL_NAME} - {result['reference']}",
                         {m: result["null_difference"][m] for m in metrics}))
        for label, cells in rows:
            lines.append(f"| {label} | " + " | ".join(_cell({"mean": c["diff"], "ci95": c["ci95"]})
                                                        for c in cells.values()) + " |")
    left_out = {k: v for k, v in result["classes"].items() if "absent" in k and v}
    lines += ["", f"Scored scene types: {', '.join(result['classes']['scene_types_scored'])}. "
              f"Left out (absent from a split): {left_out or 'none'}."]
    return "\n".join(lines)


def plot_probes(result: dict, path: Path) -> Path:
    """Bar chart, one panel per metric: mean over seeds per encoder with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, names = list(result["metrics"]), list(result["encoders"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = [result["encoders"][n][metric] for n in names]
        means = np.array([np.nan if r["mean"] is None else r["mean"] for r in rows])
        low = np.array([np.nan if r["ci95"][0] is None else r["ci95"][0] for r in rows])
        high = np.array([np.nan if r["ci95"][1] is None else r["ci95"][1] for r in rows])
        errors = np.nan_to_num(np.stack([np.maximum(means - low, 0), np.maximum(high - means, 0)]))
        ax.bar(range(len(names)), np.nan_to_num(means), yerr=errors, capsize=3, color="#4c78a8")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _encoder_arg(text: str) -> tuple[str, Path | None]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--encoder takes NAME=EXPORT_FOLDER or NAME=none, got {text!r}")
    return name, None if path.lower() == "none" else Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="labelled synthetic archive (held-out scenes)")
    parser.add_argument("--encoder", type=_encoder_arg, action="append", required=True,
                        help="NAME=EXPORT_FOLDER, or NAME=none for the random-init reference (repeat)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--chip-px", type=int, default=128)
    parser.add_argument("--max-chips-per-scene", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_probes(dict(args.encoder), args.archive, args.out, args.seeds, args.chip_px, args.device,
                        max_chips_per_scene=args.max_chips_per_scene, n_boot=args.n_boot)
    (args.out / "probes.md").write_text(probes_markdown(result) + "\n")
    plot_probes(result, args.out / "probes.png")
    print(probes_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
