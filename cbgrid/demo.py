"""The demo: the whole chain on the synthetic twin, step by step, reusing finished steps.

Twin store -> split -> the demo's runs (``catalogs/demo.yaml``) -> zero-shot report -> one month
of global maps from a shipped recipe (``products/*.yaml``) -> comparison with the twin's true
fluxes. ``cbgrid demo`` prints what :func:`run_demo` returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cbgrid import catalog, evaluation, report, splits, store, train, upscale
from cbgrid.context import grid_context
from cbgrid.progress import compute as progress_compute
from cbgrid.recipe import Recipe, load_recipe
from cbgrid.sources import twin

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """Where everything went, how long each step took, and the map against the truth."""

    store: Path
    split: Path
    runs: list[Path]
    report: report.Report
    recipe: Recipe
    upscaled: dict
    truth: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    n_sites: int = 0
    period: tuple[str, str] = ("", "")


def recipe_for(variant: str, out: Path, runs: list[Path]) -> Recipe:
    """The variant's shipped recipe, pointed at the demo's runs and output folder.

    >>> recipe_for("quick", Path("demo"), [Path("demo/runs/demo-xgboost")]).grid.resolution
    5.0
    """
    cfg = catalog.demo_config()[variant]
    recipe = load_recipe(catalog.recipe_path(cfg["recipe"]))
    return recipe.replace(runs=tuple(runs), output=out / "products")


def run_demo(out, *, quick: bool = False, sites: int | None = None, overwrite: bool = False,
             progress: bool = True) -> DemoResult:
    """Run the chain in ``out``; steps whose output is already there are reused unless ``overwrite``.

    >>> result = run_demo("cbgrid-demo", quick=True)   # doctest: +SKIP
    >>> result.truth[["variable", "R2"]]               # doctest: +SKIP
    """
    variant = "quick" if quick else "full"
    cfg = catalog.demo_config()[variant]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. store ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    sc = cfg["store"]
    n_sites = sites or int(sc["sites"])
    # the store and the recipe's twin drivers come from the same world
    difficulty = load_recipe(catalog.recipe_path(cfg["recipe"])).drivers.difficulty
    st = (out / "twin.zarr").resolve()
    if overwrite or not st.exists():
        log.info("demo: building the twin store (%d sites, %s..%s)", n_sites, sc["start"], sc["end"])
        store.write_store(twin.twin_store(n_sites=n_sites, start=str(sc["start"]), end=str(sc["end"]), seed=sc["seed"],
                                          difficulty=difficulty),
                          st, overwrite=True, progress=progress)
    ds = store.open_store(st)
    timings["store"] = time.perf_counter() - t0

    # 2. split ---------------------------------------------------------------------------------
    by, seed = cfg["split"]["by"], int(cfg["split"]["seed"])
    split_path = out / "splits" / f"{by}-seed{seed}.csv"
    if overwrite or not split_path.exists():
        splits.write_split(splits.make_split(ds, by=by, seed=seed), split_path)
    split = splits.read_split(split_path)

    # 3. train ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    runs = []
    for model, kw in cfg["models"].items():
        path = out / "runs" / f"demo-{model}"
        if overwrite or not (path / "config.json").exists():
            log.info("demo: training %s", model)
            train.fit(ds, split, train.TrainConfig(model=model, split=by, **kw), out=path, overwrite=True,
                      progress=progress)
        runs.append(path)
    timings["train"] = time.perf_counter() - t0

    # 4. evaluate ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    rep = report.write_report(runs, out / "report", store=st, split=split_path, progress=progress)
    timings["evaluate"] = time.perf_counter() - t0

    # 5. upscale one month globally, with the twin's truth alongside ---------------------------
    t0 = time.perf_counter()
    recipe = recipe_for(variant, out, runs)
    ctx = grid_context(recipe.grid.lat, recipe.grid.lon)
    spin = max(upscale.history_days(r) for r in runs)
    days = pd.date_range(recipe.period.start - pd.Timedelta(days=spin), recipe.period.end, freq="D")
    # One twin simulation gives the drivers and the true fluxes the product is checked against.
    grid = twin.twin_grid(recipe.grid.lat, recipe.grid.lon, days, recipe.drivers.seed, igbp=ctx["igbp"].values,
                          koppen=ctx["koppen"].values, with_truth=True, chunks=dict(recipe.chunks),
                          difficulty=recipe.drivers.difficulty)
    (grid,) = progress_compute(grid, desc="twin drivers", progress=progress)
    res = upscale.upscale(recipe, runs=runs, context=ctx, drivers=grid, progress=progress)
    truth = evaluation.compare_with_truth(res["products"][0], grid[["GPP_true", "RECO_true", "NEE_true"]])
    truth.to_csv(out / "products" / "truth_comparison.csv", index=False)
    timings["upscale"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return DemoResult(st, split_path, runs, rep, recipe, res, truth, timings, ds.sizes["site"],
                      (str(sc["start"]), str(sc["end"])))

