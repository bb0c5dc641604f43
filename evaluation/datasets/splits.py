"""Which chips train, tune and test: a card's ``splits:`` block, from the strongest evidence to the weakest.

    splits:
      folders: {train: train, val: val, test: test}   # per-split folders under root (MAPLE_v3 layout) or absolute
      list: splits.csv                                 # CSV with columns id,split (relative to root)
      group: scene                                     # scene | strip | {regex: PATTERN, bin: N}
      fractions: {train: 0.6, val: 0.2, test: 0.2}     # shares of what folders and the list leave open
      seed: 0

1. **Folders**: a split named in ``folders`` takes exactly the chips of its folder; the other splits share ``root``.
2. **List**: every chip of ``root`` must be listed in the CSV (a chip listed twice or missing is an error).
3. **Group key**: chips of one group (scene, strip, or the first capture of a regex, optionally ``bin``-ed as an
   integer) always land in one split, so adjacent chips of a scene never straddle train and test.
4. **Fallback**: each chip on its own.

With 3 and 4 a key (group or chip id) lands in the split whose fraction interval holds ``sha256(seed/key)``, so
adding chips never moves another chip. Only when a split would come out empty although enough keys exist does the
key nearest to its interval move in (small datasets), which ``moved`` records.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP_PRESETS = {
    "scene": r"^(.+)_r\d+_c\d+$",  # <scene>_r<row>_c<col>: chips cut by training.curate and the synthetic tasks
    "strip": r"([0-9A-F]{16})",  # a Maxar catalog (strip) id anywhere in the chip id
}


@dataclass(frozen=True)
class SplitSpec:
    fractions: dict[str, float]
    seed: int = 0
    folders: dict[str, Path] = field(default_factory=dict)
    list_file: Path | None = None
    group: str | None = None  # regex; its first capture group (or the whole match) is the key
    group_bin: int | None = None
    where: str = "dataset card"

    @property
    def names(self) -> tuple[str, ...]:
        listed = _read_list(self.list_file, self.where).values() if self.list_file else ()
        return tuple(dict.fromkeys([*self.folders, *self.fractions, *listed]))

    @property
    def open_fractions(self) -> dict[str, float]:
        """Fractions of the splits not taken by folders, renormalised (empty when folders take them all)."""
        rest = {k: v for k, v in self.fractions.items() if k not in self.folders and v > 0}
        total = sum(rest.values())
        return {k: v / total for k, v in rest.items()} if total > 0 else {}

    @property
    def kind(self) -> str:
        """How the open splits are formed, for reports: folders / list / group / chip hash."""
        parts = [f"folders ({', '.join(self.folders)})"] if self.folders else []
        if self.open_fractions or not self.folders:
            if self.list_file:
                parts.append(f"list {self.list_file.name}")
            elif self.group:
                parts.append(f"grouped by {self.group!r}" + (f" (bin {self.group_bin})" if self.group_bin else ""))
            else:
                parts.append("chip hash (no group key: adjacent chips may straddle splits)")
        return " + ".join(parts)

    def group_of(self, item_id: str, strict: bool = False) -> str:
        """Group key of a chip id: the chip itself without a group key; ``strict``: ``ValueError`` on no match."""
        if not self.group:
            return item_id
        match = re.search(self.group, item_id)
        if match is None:
            if strict:
                raise ValueError(f"{self.where}: splits.group {self.group!r} matches nothing in chip id {item_id!r}; "
                                 "fix the pattern (or drop splits.group to split chip by chip)")
            return item_id
        key = match.group(1) if match.re.groups else match.group(0)
        if self.group_bin:
            try:
                key = str(int(key) // self.group_bin)
            except ValueError:
                raise ValueError(f"{self.where}: splits.group.bin needs an integer capture, got {key!r} from chip id "
                                 f"{item_id!r}") from None
        return key

    def assign(self, ids: list[str]) -> tuple[dict[str, str], list[str]]:
        """Chip ids of ``root`` -> ({id: split}, keys moved to fill an empty split)."""
        if self.list_file:
            listed = _read_list(self.list_file, self.where)
            missing = sorted(set(ids) - set(listed))
            if missing:
                raise ValueError(f"{self.list_file}: {len(missing)} chip(s) are not listed, e.g. {missing[:3]} "
                                 "(card splits.list)")
            return {i: listed[i] for i in ids}, []
        fractions = self.open_fractions
        if not fractions:
            raise ValueError(f"{self.where}: chips found under root but every split comes from splits.folders")
        keys = {i: self.group_of(i, strict=True) for i in ids}
        unique = sorted(set(keys.values()))
        position = {k: _unit_hash(self.seed, k) for k in unique}
        bounds, start = {}, 0.0
        for name, share in fractions.items():
            bounds[name] = (start, start + share)
            start += share
        split_of_key = {k: next((n for n, (lo, hi) in bounds.items() if u < hi), list(bounds)[-1])
                        for k, u in position.items()}
        moved = _fill_empty(split_of_key, position, bounds)
        return {i: split_of_key[keys[i]] for i in ids}, moved


def _fill_empty(split_of_key: dict[str, str], position: dict[str, float],
                bounds: dict[str, tuple[float, float]]) -> list[str]:
    moved = []
    for name, (lo, hi) in bounds.items():
        if name in split_of_key.values() or len(split_of_key) < len(bounds):
            continue
        sizes = {n: list(split_of_key.values()).count(n) for n in bounds}
        donors = [k for k, s in split_of_key.items() if sizes[s] > 1]
        if not donors:
            continue
        centre = (lo + hi) / 2
        key = min(donors, key=lambda k: (abs(position[k] - centre), k))
        split_of_key[key] = name
        moved.append(key)
    return moved


def _unit_hash(seed: int, key: str) -> float:
    """A stable number in [0, 1) for ``key``: the same on every machine and Python run."""
    return int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:15], 16) / 16**15


def _read_list(path: Path, where: str) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: split list not found: {path} (card splits.list)")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"id", "split"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: a split list needs the columns id,split, has {reader.fieldnames}")
        listed: dict[str, str] = {}
        for row in reader:
            item, split = row["id"].strip(), row["split"].strip()
            if listed.get(item, split) != split:
                raise ValueError(f"{path}: chip {item!r} is listed in two splits ({listed[item]!r} and {split!r})")
            listed[item] = split
    return listed


def parse_splits(splits: dict[str, Any] | None, root: Path, where: str) -> SplitSpec:
    """The card's ``splits`` mapping -> ``SplitSpec``; ``ValueError`` naming ``where`` and the key on bad input."""
    splits = dict(splits or {})
    unknown = set(splits) - {"fractions", "seed", "folders", "list", "group"}
    if unknown:
        raise ValueError(f"{where}: unknown splits key(s) {sorted(unknown)}; known: fractions, seed, folders, list, "
                         "group")
    folders = {str(k): _resolve(v, root) for k, v in (splits.get("folders") or {}).items() if v is not None}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: split folder for {name!r} not found: {folder} (card splits.folders)")
    default = {} if folders else {"train": 0.7, "val": 0.3}
    fractions = {str(k): float(v) for k, v in (splits.get("fractions") or default).items()}
    if fractions and (any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6):
        raise ValueError(f"{where}: splits.fractions must be >= 0 and sum to 1, got {fractions}")
    if "train" not in fractions and "train" not in folders and not splits.get("list"):
        raise ValueError(f"{where}: no train split: name one in splits.fractions, splits.folders or splits.list")
    group, group_bin = splits.get("group"), None
    if isinstance(group, dict):
        if "regex" not in group:
            raise ValueError(f"{where}: splits.group as a mapping needs 'regex' (and optionally 'bin'), got {group}")
        group, group_bin = str(group["regex"]), int(group["bin"]) if group.get("bin") else None
    elif group is not None:
        group = GROUP_PRESETS.get(str(group), str(group)) if str(group) in GROUP_PRESETS else None
        if group is None:
            raise ValueError(f"{where}: splits.group must be one of {sorted(GROUP_PRESETS)} or {{regex: ...}}, "
                             f"got {splits.get('group')!r}")
    if group is not None:
        try:
            re.compile(group)
        except re.error as error:
            raise ValueError(f"{where}: splits.group regex {group!r} does not compile: {error}") from None
    list_file = _resolve(splits["list"], root) if splits.get("list") else None
    return SplitSpec(fractions, int(splits.get("seed", 0)), folders, list_file, group, group_bin, where)


def _resolve(path: str | Path, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path
