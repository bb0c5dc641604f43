"""The arctic family as timm models: every registered name builds, runs, exposes features and a consistent cfg."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

import arctic_vit
from arctic_vit.bands import CANONICAL_BANDS
from arctic_vit.models import ARCTIC_SIZES
from arctic_vit.pyramid import default_out_indices
from arctic_vit.releases import PINS

ARCTIC_MODELS = timm.list_models("arctic*")
EXPECTED = {
    "arctic_mae_vit_large_patch16_224", "arctic_mae_vit_large", "arctic_mae_vit_base_patch16_224",
    "arctic_mae_vit_small_patch16_224", "arctic_mae_vit_tiny_patch16_224",
}


def _size(name: str) -> dict[str, int]:
    return next(v for k, v in ARCTIC_SIZES.items() if f"_{k}" in name)


def test_import_registers_the_family():
    assert set(ARCTIC_MODELS) == EXPECTED


def test_list_pretrained_lists_only_tags_whose_weights_load():
    """No tag is pinned yet (revision + sha256 in releases.py), so none is listed as pretrained; a pinned one is."""
    assert not any(PINS[k].revision for k in PINS)
    assert timm.list_pretrained("arctic*") == []
    cfg = timm.models.get_pretrained_cfg("arctic_mae_vit_tiny_patch16_224.mae_arctic")
    assert cfg.hf_hub_id and not cfg.has_weights
    assert dataclasses.replace(cfg, hf_hub_revision="a" * 40, sha256="b" * 64).has_weights
    assert dataclasses.replace(cfg, file="model.safetensors").has_weights


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pretrained_cfg_has_tag_and_registry_config(name):
    """Every name, the alias included, has a registry config; the built model's cfg names its tag."""
    registry = timm.models.get_pretrained_cfg(name)
    assert registry is not None and registry.tag == "mae_arctic"
    with torch.device("meta"):
        cfg = timm.create_model(name).pretrained_cfg
    assert cfg["tag"] == "mae_arctic" and cfg["fixed_input_size"] is False
    assert cfg["input_size"] == registry.input_size and cfg["mean"] == registry.mean


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (224, 224), (240, 96)])
def test_any_multiple_of_the_patch_runs_and_matches_the_resampled_position_embedding(size):
    """fixed_input_size=False is true: (H, W) multiples of 16 run; at (h, w) the tokens equal a model built for
    (h, w) whose position embedding is the bicubic resample of the 224-px one (timm's resample_abs_pos_embed)."""
    torch.manual_seed(0)
    model = timm.create_model("arctic_mae_vit_tiny_patch16_224").eval()
    x = torch.randn(1, 4, *size)
    fixed = timm.create_model("arctic_mae_vit_tiny_patch16_224", img_size=size, dynamic_img_size=False).eval()
    state = dict(model.state_dict())
    state["pos_embed"] = timm.layers.resample_abs_pos_embed(state["pos_embed"], new_size=[s // 16 for s in size],
                                                            old_size=(14, 14), num_prefix_tokens=1)
    fixed.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), fixed.forward_features(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCTIC_MODELS)
def test_forward_backward_finite(name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32)
    assert isinstance(model, timm.models.VisionTransformer)
    assert model.num_classes == 0
    x = torch.randn(2, 4, 32, 32)
    out = model(x)
    assert out.shape == (2, _size(name)["embed_dim"])
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ARCTIC_MODELS)
def test_features_only_shapes(name):
    size = _size(name)
    indices = default_out_indices(size["depth"])
    model = timm.create_model(name, features_only=True, out_indices=indices, img_size=64)
    feats = model(torch.randn(1, 4, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, size["embed_dim"], 4, 4)] * 4
    assert model.feature_info.channels() == [size["embed_dim"]] * 4


def test_large_out_indices_are_the_papers():
    assert default_out_indices(24) == (5, 11, 17, 23)


@pytest.mark.parametrize("name", ARCTIC_MODELS)
def test_pretrained_cfg_consistency(name):
    model = timm.create_model(name, pretrained=False, img_size=32) if "large" not in name else None
    cfg = timm.models.get_pretrained_cfg(name if "." in name else _canonical(name) + ".mae_arctic").to_dict()
    n = cfg["input_size"][0]
    assert cfg["input_size"] == (4, 224, 224)
    assert len(cfg["mean"]) == len(cfg["std"]) == len(cfg["bands"]) == n
    assert set(cfg["bands"]) <= set(CANONICAL_BANDS)
    assert cfg["bit_depth"] == 11 and cfg["gsd_m"] == 0.5 and cfg["license"] and cfg["paper_name"]
    pin = PINS[_canonical(name) + ".mae_arctic"]
    assert (cfg["hf_hub_id"], cfg.get("hf_hub_revision"), cfg.get("sha256")) == (pin.repo_id, pin.revision, pin.sha256)
    if model is not None:
        data = timm.data.resolve_model_data_config(model)
        assert tuple(data["mean"]) == tuple(cfg["mean"]) and tuple(data["std"]) == tuple(cfg["std"])
        assert data["input_size"][0] == n
        assert model.pretrained_cfg["bands"] == cfg["bands"]


def _canonical(name: str) -> str:
    return "arctic_mae_vit_large_patch16_224" if name == "arctic_mae_vit_large" else name


def test_classifier_pool_and_img_size_options():
    x = torch.randn(2, 4, 64, 64)
    clf = timm.create_model("arctic_mae_vit_tiny_patch16_224", num_classes=5, img_size=64)
    assert clf(x).shape == (2, 5)
    token = timm.create_model("arctic_mae_vit_tiny_patch16_224", img_size=64).eval()
    avg = timm.create_model("arctic_mae_vit_tiny_patch16_224", img_size=64, global_pool="avg").eval()
    avg.load_state_dict(token.state_dict(), strict=False)
    assert not torch.allclose(token(x), avg(x))
    assert token.pos_embed.shape == (1, 1 + 16, 192)
    dynamic = timm.create_model("arctic_mae_vit_tiny_patch16_224", dynamic_img_size=True)
    assert dynamic(torch.randn(1, 4, 48, 80)).shape == (1, 192)


def test_forward_intermediates():
    model = timm.create_model("arctic_mae_vit_tiny_patch16_224", img_size=64)
    maps = model.forward_intermediates(torch.randn(1, 4, 64, 64), indices=[2, 5, 8, 11], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 192, 4, 4)] * 4


def test_vit_large_has_the_real_size():
    """ViT-L/16 built in full (on the meta device: no weights, no init cost), same architecture as stock timm."""
    with torch.device("meta"):
        ours = timm.create_model("arctic_mae_vit_large")
        stock = timm.create_model("vit_large_patch16_224", num_classes=0, in_chans=4)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in stock.parameters())
    assert abs(n_ours - 303.3e6) < 1e6
    assert (ours.embed_dim, len(ours.blocks), ours.blocks[0].attn.num_heads) == (1024, 24, 16)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ValueError, match="mae_arctic"):
        timm.create_model("arctic_mae_vit_tiny_patch16_224.nope")


def test_hubconf_entry_points():
    model = torch.hub.load(str(arctic_vit.__path__[0] + "/.."), "arctic_mae_vit_tiny_patch16_224", source="local",
                           img_size=32, trust_repo=True)
    assert model(torch.randn(1, 4, 32, 32)).shape == (1, 192)


# ---- the core's module graph: no circle, weights I/O and card rendering import no model/export code ----------------

PACKAGE_DIR = Path(arctic_vit.__file__).parent
CORE_MODULES = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")


def _intra_imports(module: str) -> tuple[set[str], list[str]]:
    """Static: the arctic_vit submodules ``module`` imports at module level, and any imports of them hidden in a
    function (an ``if __name__ == "__main__":`` block is a script entry, not part of the graph)."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    top, hidden = set(), []

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                return {node.module.split(".")[0]}
            if node.level == 1:
                return {a.name for a in node.names}
            if node.module and node.module.startswith("arctic_vit."):
                return {node.module.split(".")[1]}
        if isinstance(node, ast.Import):
            return {a.name.split(".")[1] for a in node.names if a.name.startswith("arctic_vit.")}
        return set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "__main__" in ast.unparse(child.test):
                continue
            found = names(child)
            if found and in_function:
                hidden.append(f"{module}:{child.lineno}: {ast.unparse(child)}")
            elif found:
                top.update(found)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top - {module}, hidden


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_core_module_graph_has_no_cycle_and_no_hidden_imports():
    graph, hidden = {}, []
    for module in CORE_MODULES:
        graph[module], found = _intra_imports(module)
        hidden += found
    assert not hidden, f"function-level imports of arctic_vit modules: {hidden}"
    cycles = [m for m in CORE_MODULES if m in _closure(graph, m)]
    assert not cycles, f"import cycle through {cycles}: {graph}"
    assert _closure(graph, "weights") <= {"corpus", "bands", "transforms", "releases"}, graph["weights"]
    assert _closure(graph, "card") == set(), graph["card"]  # rendering is pure
    assert _closure(graph, "hf_processor") == set()  # copied into exports: must stand alone
    assert "hub" in graph["registry_cards"] and "card" in graph["hub"]


def test_each_core_module_imports_alone_with_exactly_its_static_dependencies():
    """In a fresh interpreter, with a bare package object (so ``__init__`` does not import everything): import each
    module alone (the arctic_vit modules of the previous one removed from sys.modules; third-party libraries stay
    loaded, for speed) and compare the arctic_vit modules it pulled in with the static graph."""
    graph = {m: _intra_imports(m)[0] for m in CORE_MODULES}
    optional = {"smp_encoders": "segmentation_models_pytorch", "hf_processor": "transformers"}
    modules = [m for m in CORE_MODULES if m not in optional or importlib.util.find_spec(optional[m])]
    script = textwrap.dedent("""
        import importlib, json, sys, types
        import huggingface_hub, safetensors.torch, timm, torch, yaml  # noqa: F401
        for optional in ("segmentation_models_pytorch", "transformers"):
            try:
                importlib.import_module(optional)
            except ImportError:
                pass
        loaded = {}
        for module in sys.argv[2:]:
            for name in [m for m in sys.modules if m == "arctic_vit" or m.startswith("arctic_vit.")]:
                del sys.modules[name]
            pkg = types.ModuleType("arctic_vit"); pkg.__path__ = [sys.argv[1]]; sys.modules["arctic_vit"] = pkg
            importlib.import_module("arctic_vit." + module)
            loaded[module] = sorted(m.split(".", 1)[1] for m in sys.modules if m.startswith("arctic_vit."))
        print(json.dumps(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(PACKAGE_DIR), *modules], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for module in modules:
        assert set(loaded[module]) == _closure(graph, module) | {module}, module
