"""The package's structure: no import cycle, imports at the top, one home per contract,
every shipped recipe and catalog loads, lint clean, the core imports without the extras."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cbgrid import catalog, contracts, models, product, sources
from cbgrid.recipe import load_recipe

PACKAGE = Path(__file__).resolve().parents[1] / "cbgrid"
#: Function-level imports of cbgrid's own modules that are there on purpose.
#: The loss and the grouped networks are torch: training only.
LAZY_OWN = {("members.py", "cbgrid.loss"), ("members.py", "cbgrid.models.grouped")}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _top_level_imports(path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("cbgrid"):
                for a in n.names:
                    sub = f"{n.module}.{a.name}"
                    found.add(sub if sub in mods else n.module)
            elif isinstance(n, ast.Import):
                found |= {a.name for a in n.names if a.name.startswith("cbgrid")}
    return {m for m in found if m in mods}


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _top_level_imports(p, mods) - {m} for m, p in mods.items()}
    # importing a submodule imports its package first
    for m in mods:
        if "." in m and m.rsplit(".", 1)[0] in mods:
            graph[m].add(m.rsplit(".", 1)[0])
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and d != "cbgrid":
                cycle = path[path.index(d):] + [d] if d in path else [m, d]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_own_modules_are_imported_at_the_top():
    lazy = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(node):
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("cbgrid"):
                    if (p.name, n.module) not in LAZY_OWN:
                        lazy.append(f"{p.relative_to(PACKAGE)}:{n.lineno} {n.module}")
    assert not lazy, f"function-level imports of cbgrid modules: {lazy}"


def test_core_imports_without_the_training_and_earth_engine_extras():
    """Reading stores and products and scoring must not import torch, the trees or Earth Engine."""
    code = (
        "import sys; import cbgrid, cbgrid.store, cbgrid.product, cbgrid.evaluation, cbgrid.report, cbgrid.runs, "
        "cbgrid.upscale, cbgrid.cli; cbgrid.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'xgboost', 'lightgbm', 'ee', 'xee', 'matplotlib', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_shipped_recipe_loads():
    recipes = catalog.recipes()
    assert {p.name for p in recipes} >= {"twin-1deg-month.yaml", "twin-5deg-quick.yaml", "era5land-local.yaml",
                                          "earthengine-europe.yaml"}
    for path in recipes:
        r = load_recipe(path)
        assert r.drivers.name in sources.driver_sources()
        assert isinstance(r.drivers, contracts.DriverSource)
        assert r.grid.shape[0] > 0 and len(r.period.pieces()) >= 1
    demo = catalog.demo_config()
    for variant in ("full", "quick"):
        assert load_recipe(catalog.recipe_path(demo[variant]["recipe"])).drivers.name == "twin"
        for name in demo[variant]["models"]:
            models.spec(name)


def test_catalog_hyperparameters_are_the_published_table():
    # PAPER_FACTS table: one row per network and split; trees from the paper's text
    assert catalog.hyperparameters("tamrl", "igbp") == {"hidden": 128, "dropout": 0.2, "layers": 2, "latent": 64,
                                                         "lr": 1e-4}
    assert catalog.hyperparameters("mlp", "official-koppen") == {"hidden": 256, "dropout": 0.3, "lr": 5e-4}
    assert catalog.hyperparameters("xgboost")["max_depth"] == 10
    assert catalog.hyperparameter_provenance("ctlstm", "koppen")["r2_mean"] == pytest.approx(0.398, abs=1e-3)
    for name in models.NETWORKS:
        for split in ("igbp", "koppen"):
            assert catalog.hyperparameters(name, split), (name, split)


def test_implementations_satisfy_the_contracts(tmp_path):
    from cbgrid import members, runs, testing
    from cbgrid.sources.local import LocalDrivers
    from cbgrid.sources.twin import TwinDrivers

    assert isinstance(testing.StubPredictor(), contracts.Predictor)
    assert isinstance(testing.MemoryWriter((1, 1, 1)), contracts.BlockWriter)
    for cls in (members.NetworkMember, members.TreeMember):
        for method in ("fit", "predict", "save", "load"):
            assert callable(getattr(cls, method))
    for name in ("features", "history_days", "predict"):
        assert hasattr(runs.Run, name)
    assert isinstance(TwinDrivers(), contracts.DriverSource)
    assert isinstance(LocalDrivers(paths=("x.nc",)), contracts.DriverSource)
    assert hasattr(product.ProductWriter, "write") and hasattr(product.ProductWriter, "set_attrs")


def test_registries_take_a_new_model_for_a_block_only():
    from cbgrid.models.trees import TreeModel

    class Stumps(TreeModel):
        name = "stumps"

        def fit_one(self, x, y, w, val, seed):
            return float(y.mean()), []

        def predict_one(self, booster, data):
            return data[:, 0] * 0 + booster

    with models.registered("stumps", Stumps):
        assert models.spec("stumps").family == "tree" and "stumps" in models.available()
    assert "stumps" not in models.available()


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed")
def test_lint_is_clean():
    exe = Path(sys.executable).parent / "ruff"
    res = subprocess.run([str(exe) if exe.exists() else "ruff", "check", str(PACKAGE.parent)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]
