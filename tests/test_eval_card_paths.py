"""Where a dataset card's relative paths resolve: override paths against the caller's folder (never inside an
installed package), a card file's own paths against the card file, the shipped cards against the repository root."""

from __future__ import annotations

from pathlib import Path

import yaml

from evaluation.datasets.card import REPO_ROOT, SHIPPED_CARDS, card_base, card_from_dict, load_card

CARD = {"name": "mine", "format": "raster_pairs", "root": "chips", "classes": ["background", "thing"],
        "bands": ["red", "green", "blue"], "bit_depth": 8,
        "generate": {"task": "rts", "scenes_dir": "scenes", "scenes": 1}}


def test_override_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    card = load_card(SHIPPED_CARDS / "synthetic_rts.yaml",
                     {"root": "demo_out/tasks/rts", "generate": {"scenes_dir": "demo_out/tasks/scenes"}})
    assert card.root == tmp_path / "demo_out" / "tasks" / "rts"
    assert card.generate["scenes_dir"] == str(tmp_path / "demo_out" / "tasks" / "scenes")
    assert card.generate["task"] == "rts"  # the rest of the card's generate section still merges in
    elsewhere = tmp_path / "caller"
    assert load_card(SHIPPED_CARDS / "synthetic_rts.yaml", {"root": "x"}, base=elsewhere).root == elsewhere / "x"


def test_card_file_paths_resolve_against_the_card_file(tmp_path, monkeypatch):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "mine.yaml").write_text(yaml.safe_dump(CARD))
    monkeypatch.chdir(tmp_path)  # not the card's folder: the card's paths do not depend on where it is loaded from
    card = load_card(folder / "mine.yaml")
    assert card.root == folder / "chips" and card.generate["scenes_dir"] == str(folder / "scenes")
    assert card_from_dict(CARD).root == tmp_path / "chips"  # a mapping: the caller's folder
    assert card_from_dict(CARD, base=folder).root == folder / "chips"


def test_shipped_cards_resolve_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert card_base(SHIPPED_CARDS / "maple_iwp.yaml") == REPO_ROOT
    card = load_card("evaluation/datasets/cards/synthetic_rts.yaml")
    assert card.root == REPO_ROOT / "outputs" / "synthetic_tasks" / "rts"
    assert card.generate["scenes_dir"] == str(REPO_ROOT / "outputs" / "synthetic_tasks" / "scenes")
    assert Path(load_card(SHIPPED_CARDS / "maple_iwp.yaml").root) == (REPO_ROOT / "../shared/data/maple_iwp/labelled"
                                                                       ).resolve()
