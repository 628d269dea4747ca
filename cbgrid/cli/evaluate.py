"""``cbgrid evaluate RUN_DIR [RUN_DIR ...] --out REPORT_DIR``: the zero-shot score report.

Reads each run's ``predictions.nc`` (model, split and feature set come from its attributes),
groups runs of the same model, split and feature set into a seed ensemble, scores it on the
split's test sites and writes scores, quantile tables, class breakdowns, a ranking, the
published baselines on the same sites (official splits) and plots.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.nc"
CONFIG_NAMES = ("config.json", "config.yaml", "config.yml")
RUN_SPLIT = "split.csv"  # the membership a run was trained with, written beside its predictions
STORE_KEYS = ("store", "store_path")
SPLIT_KEYS = ("split_path", "split_file", "split_csv", "split")


def register(sub: argparse._SubParsersAction) -> None:
    from cbgrid.evaluation import MIN_QC_DAYS

    p = sub.add_parser(
        "evaluate",
        help="score runs zero-shot on their test sites and write a report (tables, plots)",
        description=(
            "Score the predictions of one or more training runs on the test sites of their split, "
            "on NEE_VUT_USTAR50_QC == 1 days only. Runs of the same model, split and feature set "
            "(different seeds) are averaged into an ensemble and scored once; the spread across "
            "seeds is reported too."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help=f"run directories holding {PREDICTIONS}")
    p.add_argument("--out", required=True, type=Path, help="report directory (created)")
    p.add_argument("--store", type=Path, default=None, help="benchmark store (default: the one in each run's config)")
    p.add_argument("--split", type=Path, default=None, help="split CSV (default: the one in each run's config)")
    p.add_argument("--min-days", type=int, default=MIN_QC_DAYS,
                   help=f"fewest QC = 1 days for a site to be scored (default {MIN_QC_DAYS})")
    p.add_argument("--sites", nargs="*", default=None,
                   help="sites for the time-series plots (default: the best, median and worst GPP R2)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_evaluate)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run directory's predictions and where its store and split membership are."""

    path: Path
    predictions: object  # xr.Dataset
    store: Path | None
    split: Path | None

    @property
    def key(self) -> tuple[str, str, str]:
        a = self.predictions.attrs
        return (str(a.get("model", "unknown")), str(a.get("split", "unknown")), str(a.get("feature_set", "unknown")))


def _find(config: dict, keys) -> str | None:
    """First of ``keys`` holding a string, at the top level or one level down."""
    for k in keys:
        if isinstance(config.get(k), str):
            return config[k]
    for v in config.values():
        if isinstance(v, dict):
            hit = _find(v, keys)
            if hit:
                return hit
    return None


def _run_config(run_dir: Path) -> dict:
    for name in CONFIG_NAMES:
        p = run_dir / name
        if p.exists():
            if p.suffix == ".json":
                return json.loads(p.read_text())
            import yaml

            return yaml.safe_load(p.read_text()) or {}
    return {}


def _resolve(value: str | None, base: Path) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and (base / p).exists():
        p = base / p  # relative to the run directory first, then to the working directory
    return p.resolve()


def load_run(run_dir: Path, store: Path | None = None, split: Path | None = None) -> Run:
    """A run's predictions (loaded into memory) and the store and split it was trained on."""
    import xarray as xr

    run_dir = Path(run_dir)
    pred_path = run_dir / PREDICTIONS if run_dir.is_dir() else run_dir
    if not pred_path.exists():
        raise FileNotFoundError(f"{run_dir}: no {PREDICTIONS}; pass run directories written by `cbgrid train`")
    with xr.open_dataset(pred_path) as ds:
        predictions = ds.load()
    if "prediction" not in predictions:
        raise ValueError(f"{pred_path} has no 'prediction' variable (it has {list(predictions.data_vars)})")
    config = _run_config(pred_path.parent)
    attrs = predictions.attrs
    store = store or _resolve(attrs.get("store") or _find(config, STORE_KEYS), pred_path.parent)
    split_value = attrs.get("split_path") or _find(config, SPLIT_KEYS)
    if split_value and not str(split_value).endswith(".csv"):
        split_value = None  # a split *name* such as 'igbp', not a file
    split = split or _resolve(split_value, pred_path.parent)
    if split is None and (pred_path.parent / RUN_SPLIT).exists():
        split = (pred_path.parent / RUN_SPLIT).resolve()
    return Run(pred_path.parent, predictions, store, split)


def _read_split(path: Path):
    """A split CSV: the full ``cbgrid.splits`` layout, or at least site and set columns."""
    import pandas as pd

    from cbgrid import splits
    from cbgrid.schema import SchemaError

    try:
        return splits.read_split(path)
    except SchemaError:
        df = pd.read_csv(path, dtype={"site": str}, keep_default_na=False)
        if not {"site", "set"} <= set(df.columns):
            raise
        return df


def _one(paths, what: str, key) -> Path:
    paths = set(paths)
    if None in paths or not paths:
        raise ValueError(
            f"{'/'.join(key)}: cannot tell which {what} the run used from its files; pass --{what}"
        )
    if len(paths) > 1:
        raise ValueError(f"{'/'.join(key)}: its runs name different {what}s {sorted(map(str, paths))}; pass --{what}")
    return paths.pop()


def _one_split(paths, key):
    """The split of a group of runs: each run may carry its own copy; they must agree."""
    for p in paths:
        if p is None:
            raise ValueError(f"{'/'.join(key)}: cannot tell which split the run used from its files; pass --split")
    tables = {p: _read_split(p) for p in dict.fromkeys(paths)}
    tests = {p: frozenset(t.loc[t["set"] == "test", "site"].astype(str)) for p, t in tables.items()}
    if len(set(tests.values())) > 1:
        raise ValueError(f"{'/'.join(key)}: its runs were tested on different sites ({', '.join(map(str, tests))}); "
                         "score them separately or pass --split")
    first = next(iter(tables))
    return first, tables[first]


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass
class Experiment:
    """One model × split × feature set: its (ensemble) scores and its members' scores."""

    key: tuple[str, str, str]
    runs: list
    predictions: object
    store: object
    scores: object
    member_frames: list = field(default_factory=list)


def score_runs(runs: list[Run], min_days: int) -> list[Experiment]:
    import pandas as pd

    from cbgrid import evaluation as ev
    from cbgrid.store import open_store

    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    stores = {}
    out = []
    for key, members in groups.items():
        store_path = _one([m.store for m in members], "store", key)
        split_path, split = _one_split([m.split for m in members], key)
        if store_path not in stores:
            stores[store_path] = open_store(store_path)
        store = stores[store_path]
        if key[1] != "unknown" and "split" in split and set(split["split"]) != {key[1]}:
            log.warning("%s: predictions say split %r but %s holds %s",
                        "/".join(key), key[1], split_path, sorted(set(split["split"])))
        preds = [m.predictions for m in members]
        ens = ev.ensemble(preds)
        log.info("%s: scoring %s", "/".join(key), f"the mean of {len(preds)} runs" if len(preds) > 1 else "1 run")
        scores = ev.evaluate(ens, store, split, min_days=min_days)
        frames = []
        if len(preds) > 1:
            # Members have the ensemble's exclusions; their warnings would only repeat them.
            ev_log = logging.getLogger(ev.__name__)
            level = ev_log.level
            ev_log.setLevel(logging.ERROR)
            try:
                frames = [ev.to_frame(ev.evaluate(p, store, split, min_days=min_days)) for p in preds]
            finally:
                ev_log.setLevel(level)
            per_site = pd.concat(frames).groupby(["target", "site"])[[m.name for m in ev.METRICS]].std()
            std = per_site.to_xarray().to_dataarray("metric").transpose("metric", "site", "target")
            scores["score_seed_std"] = std.reindex_like(scores["score"])
            scores["score_seed_std"].attrs = {"long_name": f"standard deviation of the per-site score across {len(preds)} runs"}
        scores.attrs["ensemble_size"] = len(preds)
        scores.attrs["store"] = str(store_path)
        scores.attrs["split_file"] = str(split_path)
        out.append(Experiment(key, members, ens, store, scores, frames))
    return out


def combine(experiments: list[Experiment]):
    """All experiments' scores in one Dataset with an ``experiment`` dimension (union of sites)."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    site_coords = ["lat", "lon", "igbp", "koppen"]
    table = pd.concat([e.scores[site_coords].to_dataframe()[site_coords] for e in experiments])
    table = table[~table.index.duplicated()].sort_index()
    parts = []
    for e in experiments:
        s = e.scores.drop_vars(site_coords).reindex(site=np.asarray(table.index.tolist()))
        s["n_days"] = s["n_days"].fillna(0).astype(np.int32)
        s["status"] = s["status"].fillna(0).astype(np.int8)
        s.attrs = {}
        parts.append(s.expand_dims(experiment=["/".join(e.key)]))
    ds = xr.concat(parts, dim="experiment", join="outer", combine_attrs="drop")
    ds["status"].attrs = experiments[0].scores["status"].attrs
    ds = ds.assign_coords(
        model=("experiment", [e.key[0] for e in experiments]),
        split=("experiment", [e.key[1] for e in experiments]),
        feature_set=("experiment", [e.key[2] for e in experiments]),
        ensemble_size=("experiment", [int(e.scores.attrs["ensemble_size"]) for e in experiments]),
        **{c: ("site", np.asarray(table[c].tolist()), experiments[0].scores[c].attrs) for c in site_coords},
    )
    first = experiments[0].scores.attrs
    ds.attrs = {
        "title": "cbgrid zero-shot scores",
        "qc_rule": first["qc_rule"],
        "min_days": first["min_days"],
        "comment": "score is NaN where a site is not a test site of the experiment's split or status != 0",
    }
    return ds


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _write_table(df, out: Path, name: str, title: str, md=None) -> list[str]:
    from cbgrid.evaluation import markdown_table

    df.to_csv(out / f"{name}.csv", index=False)
    text = f"# {title}\n\n{markdown_table(md if md is not None else df)}\n"
    (out / f"{name}.md").write_text(text)
    return [f"{name}.csv", f"{name}.md"]


def cmd_evaluate(args) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from cbgrid import evaluation as ev

    runs = [load_run(r, args.store, args.split) for r in tqdm(args.runs, desc="reading runs", unit="run")]
    experiments = score_runs(runs, args.min_days)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    scores = combine(experiments)
    scores.to_netcdf(out / "scores.nc")
    frames = [ev.to_frame(e.scores).assign(ensemble_size=int(e.scores.attrs["ensemble_size"])) for e in experiments]
    per_site = pd.concat(frames, ignore_index=True)
    per_site.to_csv(out / "scores.csv", index=False)
    written = ["scores.nc", "scores.csv"]

    mine = per_site.assign(source="this report")
    pub_all = _published(frames)

    keys = ["source", *ev.KEYS]
    summary = ev.quantile_table(mine, by=keys)
    if pub_all is not None:
        summary = pd.concat([summary, ev.quantile_table(pub_all, by=keys)], ignore_index=True)
    md = ev.published_format(summary.assign(model=_with_source(summary)))
    written += _write_table(summary, out, "summary", "Zero-shot scores: median [25th, 75th percentile] across test sites", md)

    breakdowns = {}
    for by, label in (("igbp", "IGBP"), ("koppen", "Köppen")):
        b = ev.breakdown(mine, by, keys=keys)
        if pub_all is not None:
            b = pd.concat([b, ev.breakdown(pub_all, by, keys=keys)], ignore_index=True)
        breakdowns[by] = b
        bmd = ev.published_format(b.assign(model=_with_source(b)), by=[by])
        written += _write_table(b, out, f"breakdown_{by}",
                                f"Scores per {label} class: site count and quantiles across sites", bmd)

    rank = ev.ranking(summary.assign(model=_with_source(summary)))
    rank_md = rank.assign(target=rank["target"].map(lambda t: ev.TARGET_LABELS.get(t, t)))
    rank_md[[c for c in rank if c.startswith("rank_")]] = rank_md[[c for c in rank if c.startswith("rank_")]].astype(int)
    written += _write_table(rank, out, "ranking", "Ranking by median score across test sites (1 = best)", rank_md)

    spreads = [ev.seed_spread(e.member_frames) for e in experiments if e.member_frames]
    if spreads:
        written += _write_table(pd.concat(spreads, ignore_index=True), out, "seed_spread",
                                "Spread across seeds: the median across sites of each run, summarised over runs")

    if pub_all is not None:
        pub_all.to_csv(out / "published_site_scores.csv", index=False)
        written.append("published_site_scores.csv")
        official = per_site[per_site["split"].isin(list(ev.OFFICIAL_SPLITS))]
        side = pd.concat([ev.side_by_side(official, pub_all, m) for m in ("R2", "RMSE", "nMAE", "RAE")], ignore_index=True)
        side_md = side[side["metric"] == "R2"].copy()
        side_md["target"] = side_md["target"].map(lambda t: ev.TARGET_LABELS.get(t, t))
        written += _write_table(side, out, "per_site_vs_published",
                                "Per-site R² beside every published baseline (same sites; all metrics in the CSV)", side_md)

    bad = ev.excluded(per_site)
    bad.to_csv(out / "excluded_sites.csv", index=False)
    written.append("excluded_sites.csv")

    figures = []
    if not args.no_plots:
        figures = _plots(args, out, experiments, pd.concat([mine, pub_all]) if pub_all is not None else mine,
                         breakdowns["igbp"], breakdowns["koppen"])
    _write_index(out, experiments, summary, md, bad, pub_all, written, figures, args.min_days)
    print(f"Zero-shot scores ({ev.QC_RULE_TEXT}; sites with < {args.min_days} such days not scored)\n")
    print(ev.markdown_table(md))
    print(f"\nreport: {out / 'report.md'}")
    return 0


def _published(frames):
    """Published per-site scores on the official-split sites that every experiment of that
    split scored (so all quantiles are over the same sites); None without official splits."""
    import pandas as pd

    from cbgrid import catalog
    from cbgrid import evaluation as ev

    out = []
    for split in dict.fromkeys(f["split"].iloc[0] for f in frames):
        if split not in ev.OFFICIAL_SPLITS:
            continue
        group = [f for f in frames if f["split"].iloc[0] == split]
        scored = [set(map(tuple, f.dropna(subset=["R2", "RMSE"], how="all")[["target", "site"]].to_numpy())) for f in group]
        common = set.intersection(*scored)
        if any(s != common for s in scored):
            log.warning("%s: experiments scored different sites; published baselines are shown on the %d "
                        "(target, site) pairs all of them scored", split, len(common))
        feature_sets = dict.fromkeys(f["feature_set"].iloc[0] for f in group)
        pub = pd.concat([ev.published_comparison(group[0], fs) for fs in feature_sets]).drop_duplicates()
        keep = [(t, s) in common for t, s in zip(pub["target"], pub["site"])]
        pub = pub[keep]
        n = pub["site"].nunique()
        n_official = len(catalog.official_test_sites(split))
        log.info("%s: comparing with the published baselines on %d of the %d official test sites", split, n, n_official)
        out.append(pub.assign(source="published"))
    return pd.concat(out, ignore_index=True) if out else None


def _with_source(df) -> list[str]:
    """Model names with published baselines marked, for tables that mix both."""
    return [f"{m} [published]" if s == "published" else str(m) for m, s in zip(df["model"], df["source"])]


def _plots(args, out: Path, experiments, frame, breakdown_igbp, breakdown_koppen) -> list[str]:
    from tqdm.auto import tqdm

    from cbgrid import plots
    from cbgrid.schema import GPP, TARGETS

    figures = []
    jobs = []
    for t in TARGETS:
        short = t.split("_")[0]
        jobs.append((f"distribution_{short}.png", lambda t=t: plots.metric_distributions(frame, t)))
        jobs.append((f"heatmap_igbp_{short}.png", lambda t=t: plots.class_heatmap(breakdown_igbp, "igbp", t)))
        jobs.append((f"heatmap_koppen_{short}.png", lambda t=t: plots.class_heatmap(breakdown_koppen, "koppen", t)))
        jobs.append((f"map_R2_{short}.png", lambda t=t: plots.site_map(frame[frame["source"] == "this report"], t)))
    for e in experiments:
        sites = args.sites if args.sites else _example_sites(e.scores, GPP)
        tag = "_".join(e.key)
        for s in sites:
            if s not in e.predictions["site"].values:
                log.warning("%s: no prediction for site %s; no time-series plot", tag, s)
                continue
            jobs.append((f"timeseries_{tag}_{s}.png", lambda e=e, s=s: plots.timeseries(e.store, e.predictions, s, e.scores)))
    for name, make in tqdm(jobs, desc="plots", unit="figure"):
        plots.save(make(), out / name)
        figures.append(name)
    return figures


def _example_sites(scores, target) -> list[str]:
    """The best, median and worst scored sites by R2 for ``target``."""
    r2 = scores["score"].sel(metric="R2", target=target).to_series().dropna().sort_values()
    if r2.empty:
        return []
    picks = [r2.index[-1], r2.index[len(r2) // 2], r2.index[0]]
    return list(dict.fromkeys(picks))


def _write_index(out, experiments, summary, md, bad, pub_all, written, figures, min_days) -> None:
    from cbgrid import evaluation as ev

    lines = ["# Zero-shot evaluation report", ""]
    lines.append(
        f"Scores on the test sites of each split, on {ev.QC_RULE_TEXT} only. Per site: R², RMSE "
        "(gC m-2 d-1), nMAE (MAE / |site mean of observations|), RAE (MAE / MAE of the site-mean "
        f"predictor). Quantiles are across sites, with the number of sites beside them. Sites with "
        f"fewer than {min_days} QC = 1 days are not scored."
    )
    lines += ["", "## Experiments", "", "| experiment | runs | test sites | scored (GPP) | not scored |", "|---|---|---|---|---|"]
    for e in experiments:
        s = e.scores
        from cbgrid.schema import GPP

        n_scored = int((s["status"].sel(target=GPP) == 0).sum()) if GPP in s["target"].values else 0
        n_bad = int((s["status"] != 0).any("target").sum())
        lines.append(f"| {'/'.join(e.key)} | {len(e.runs)} | {s.sizes['site']} | {n_scored} | {n_bad} |")
    lines += ["", "## Summary", "", ev.markdown_table(md), ""]
    lines.append("n = sites with a score for that target (R² and RAE leave out sites with constant "
                 "observations, nMAE sites with a zero mean; exact counts per metric in summary.csv).")
    if pub_all is not None:
        from cbgrid import catalog

        counts = pub_all.groupby("split")["site"].nunique()
        lines += ["", "Published baselines (CarbonBench per-site scores, shipped in catalogs/carbonbench; see "
                  "docs/catalogs.md for attribution) are quantiles over exactly the sites scored here: "
                  + ", ".join(f"{k}: {v} of the {len(catalog.official_test_sites(k))} official test sites"
                              for k, v in counts.items()) + ". Per-site values side by side: per_site_vs_published.csv."]
    if len(bad):
        reasons = bad.groupby("reason")["site"].nunique()
        lines += ["", "## Not scored", ""] + [f"- {r}: {n} site(s)" for r, n in reasons.items()]
        lines += ["", "Details: excluded_sites.csv"]
    lines += ["", "## Files", ""] + [f"- [{w}]({w})" for w in written]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n")
