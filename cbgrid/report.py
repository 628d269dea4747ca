"""The zero-shot score report of a set of run folders: scores, tables, baselines, figures.

``write_report(run_dirs, out)`` reads each run's ``predictions.nc`` (model, split and feature set
from its attributes; store and split from the run folder), groups runs of the same model, split
and feature set into a seed ensemble, scores it on the split's test sites
(``cbgrid.evaluation``) and writes, as one unit, scores (``scores.nc``, ``scores.csv``), quantile
tables, class breakdowns, a ranking, the published baselines on the same sites (official
splits) and figures. ``cbgrid evaluate``, the demo and upscaling all call it or its parts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, plots
from cbgrid import evaluation as ev
from cbgrid.atomic import replace_dir
from cbgrid.errors import InputError
from cbgrid.progress import bar as progress_bar
from cbgrid.runs import RunPredictions, load_predictions
from cbgrid.schema import GPP, TARGETS
from cbgrid.store import open_store

log = logging.getLogger(__name__)


def _one(paths, what: str, key) -> Path:
    paths = set(paths)
    if None in paths or not paths:
        raise InputError(
            f"{'/'.join(key)}: cannot tell which {what} the run used from its files; pass --{what}"
        )
    if len(paths) > 1:
        raise InputError(f"{'/'.join(key)}: its runs name different {what}s {sorted(map(str, paths))}; pass --{what}")
    return paths.pop()


def _one_split(members: list[RunPredictions], key) -> tuple[object, pd.DataFrame]:
    """The split of a group of runs: each run may carry its own copy; they must agree."""
    tables = {}
    for m in members:
        ref = m.split if not isinstance(m.split, pd.DataFrame) else f"{m.path or 'run'} (in memory)"
        if ref not in tables:
            tables[ref] = m.split_table()
    tests = {p: frozenset(t.loc[t["set"] == "test", "site"].astype(str)) for p, t in tables.items()}
    if len(set(tests.values())) > 1:
        raise InputError(f"{'/'.join(key)}: its runs were tested on different sites "
                         f"({', '.join(str(p) for p in tests)}); score them separately or pass --split")
    first = next(iter(tables))
    return first, tables[first]


@dataclass
class Experiment:
    """One model × split × feature set: its (ensemble) scores and its members' scores."""

    key: tuple[str, str, str]
    runs: list
    predictions: xr.Dataset
    store: xr.Dataset
    scores: xr.Dataset
    member_frames: list = field(default_factory=list)
    split: pd.DataFrame | None = None


def score_ensemble(members: list[RunPredictions], key, *, min_days: int | None = None,
                   stores: dict | None = None) -> Experiment:
    """Average the members' predictions (``evaluation.ensemble``) and score the mean on the test
    sites of the one split and store they share (ValueError naming what differs otherwise).
    ``min_days`` defaults to the runs' protocol's (30 cbgrid, 1 reference)."""
    if min_days is None:
        min_days = members[0].min_days
    stores = {} if stores is None else stores
    store_path = _one([m.store for m in members], "store", key)
    split_path, split = _one_split(members, key)
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
    if not bool(np.isfinite(scores["score"]).any()):
        raise InputError(
            f"{'/'.join(key)}: no test site has the {min_days} QC = 1 days with predictions it needs to be "
            f"scored ({scores.sizes.get('site', 0)} test site(s)); lower --min-days, or check the runs predicted the "
            "test sites of this store"
        )
    scores.attrs["ensemble_size"] = len(preds)
    scores.attrs["store"] = str(store_path)
    scores.attrs["split_file"] = str(split_path)
    return Experiment(tuple(key), list(members), ens, store, scores, split=split)


def score_runs(runs: list[RunPredictions], min_days: int | None = None) -> list[Experiment]:
    """Group runs into seed ensembles (same model, split and feature set), score each ensemble
    on its split's test sites and each member on its own (for the seed spread).

    >>> experiments = score_runs([load_predictions("runs/xgboost")])  # doctest: +SKIP
    """
    groups: dict[tuple, list[RunPredictions]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    stores: dict = {}
    out = []
    for key, members in groups.items():
        e = score_ensemble(members, key, min_days=min_days, stores=stores)
        if len(members) > 1:
            # Members have the ensemble's exclusions; their warnings would only repeat them.
            e.member_frames = [ev.to_frame(ev.evaluate(m.predictions, e.store, e.split,
                                                       min_days=int(e.scores.attrs["min_days"]),
                                                       log_exclusions=False)) for m in members]
            per_site = pd.concat(e.member_frames).groupby(["target", "site"])[[m.name for m in ev.METRICS]].std()
            std = per_site.to_xarray().to_dataarray("metric").transpose("metric", "site", "target")
            e.scores["score_seed_std"] = std.reindex_like(e.scores["score"])
            e.scores["score_seed_std"].attrs = {
                "long_name": f"standard deviation of the per-site score across {len(members)} runs"}
        out.append(e)
    return out


def ensemble_scores(runs) -> tuple[pd.DataFrame | None, str | None]:
    """Per-site zero-shot scores of the ensemble of ``runs`` (all of them averaged, as a product
    averages them) on their test sites, and the split's name; (None, None), with a warning, when
    a run carries no test-site predictions or does not say its store and split.
    """
    members = []
    for ref in runs:
        if not isinstance(ref, (str, os.PathLike)) and not hasattr(ref, "as_predictions"):
            log.warning("run %s carries no test-site predictions; the product carries no zero-shot scores", ref)
            return None, None
        try:
            rp = ref.as_predictions() if hasattr(ref, "as_predictions") else load_predictions(ref)
        except (FileNotFoundError, ValueError) as e:
            log.warning("run %s: %s; the product carries no zero-shot scores", ref, e)
            return None, None
        if rp.store is None or rp.split is None:
            log.warning("run %s does not say which store or split it used; the product carries no zero-shot "
                        "scores", ref)
            return None, None
        members.append(rp)
    try:
        e = score_ensemble(members, ("ensemble", "unknown", "unknown"))
    except ValueError as err:
        raise InputError(f"an ensemble's zero-shot score needs one store and one split: {err}") from None
    split_df = e.split
    name = str(split_df["split"].iloc[0]) if "split" in split_df else str(e.scores.attrs.get("split"))
    if "seed" in split_df and pd.notna(split_df["seed"].iloc[0]):
        name = f"{name} (seed {int(split_df['seed'].iloc[0])})"
    return ev.to_frame(e.scores), name


def combine(experiments: list[Experiment]) -> xr.Dataset:
    """All experiments' scores in one Dataset with an ``experiment`` dimension (union of sites)."""
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
        protocol=("experiment", [e.key[3] if len(e.key) > 3 else "cbgrid" for e in experiments]),
        min_days=("experiment", [int(e.scores.attrs["min_days"]) for e in experiments]),
        ensemble_size=("experiment", [int(e.scores.attrs["ensemble_size"]) for e in experiments]),
        **{c: ("site", np.asarray(table[c].tolist()), experiments[0].scores[c].attrs) for c in site_coords},
    )
    first = experiments[0].scores.attrs
    ds.attrs = {
        "title": "cbgrid zero-shot scores",
        "qc_rule": first["qc_rule"],
        "comment": "score is NaN where a site is not a test site of the experiment's split or status != 0",
    }
    return ds


def _write_table(df, out: Path, name: str, title: str, md=None) -> list[str]:
    df.to_csv(out / f"{name}.csv", index=False)
    text = f"# {title}\n\n{ev.markdown_table(md if md is not None else df)}\n"
    (out / f"{name}.md").write_text(text)
    return [f"{name}.csv", f"{name}.md"]


@dataclass
class Report:
    """What :func:`write_report` wrote: the folder, its experiments and the summary table."""

    path: Path
    experiments: list[Experiment]
    summary: pd.DataFrame
    summary_markdown: str
    files: list[str]
    figures: list[str]

    @property
    def index(self) -> Path:
        return self.path / "report.md"


def write_report(runs, out, *, store=None, split=None, min_days: int | None = None, sites=None,
                 plots: bool = True, overwrite: bool = True, progress: bool = True) -> Report:
    """Score run folders (or loaded ``RunPredictions``) and write the zero-shot report to ``out``.

    The report folder is written beside ``out`` and swapped in only when complete, so a failure
    leaves an existing report untouched. ``store``/``split`` override what the runs recorded;
    ``min_days`` (fewest scored days per site) defaults to each run's protocol's.

    >>> report = write_report(["runs/xgboost", "runs/ctlstm"], "reports/koppen")  # doctest: +SKIP
    >>> print(report.summary_markdown)                                             # doctest: +SKIP
    """
    runs = [r if isinstance(r, RunPredictions) else load_predictions(r, store, split)
            for r in progress_bar(list(runs), desc="reading runs", unit="run", progress=progress)]
    if not runs:
        raise InputError("no runs to score")
    experiments = score_runs(runs, min_days)
    with replace_dir(out, overwrite=overwrite, hint="choose another --out") as tmp:
        report = _write(tmp, experiments, sites=sites, plots=plots)
    report.path = Path(out)
    return report


def write_experiments(out: Path, experiments: list[Experiment], *, sites=None, plots: bool = True,
                      notes=()) -> Report:
    """Write the report of experiments already scored (e.g. model output at the towers,
    ``cbgrid.validate``) into folder ``out``; ``notes`` are Markdown lines for report.md."""
    if not experiments:
        raise InputError("no experiments to report")
    return _write(Path(out), experiments, sites=sites, plots=plots, notes=notes)


def _write(out: Path, experiments: list[Experiment], *, sites, plots: bool, notes=()) -> Report:
    out.mkdir(parents=True, exist_ok=True)

    scores = combine(experiments)
    scores.to_netcdf(out / "scores.nc")
    frames = [ev.to_frame(e.scores).assign(ensemble_size=int(e.scores.attrs["ensemble_size"])) for e in experiments]
    per_site = pd.concat(frames, ignore_index=True)
    per_site.to_csv(out / "scores.csv", index=False)
    written = ["scores.nc", "scores.csv"]

    mine = per_site.assign(source="this report")
    pub_all = published_baselines(frames)

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
    if plots:
        figures = _plots(out, experiments, pd.concat([mine, pub_all]) if pub_all is not None else mine,
                         breakdowns["igbp"], breakdowns["koppen"], sites)
    _write_index(out, experiments, summary, md, bad, pub_all, written, figures, notes)
    return Report(out, experiments, summary, ev.markdown_table(md), written, figures)


def published_baselines(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """Published per-site scores on the official-split sites that every experiment of that
    split scored (so all quantiles are over the same sites); None without official splits."""
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


def _plots(out: Path, experiments, frame, breakdown_igbp, breakdown_koppen, sites=None) -> list[str]:

    figures = []
    jobs = []
    scored = set(frame["target"])
    for t in [t for t in TARGETS if t in scored]:  # a model may give one flux only (e.g. gpp alone)
        short = t.split("_")[0]
        jobs.append((f"distribution_{short}.png", lambda t=t: plots.metric_distributions(frame, t)))
        jobs.append((f"heatmap_igbp_{short}.png", lambda t=t: plots.class_heatmap(breakdown_igbp, "igbp", t)))
        jobs.append((f"heatmap_koppen_{short}.png", lambda t=t: plots.class_heatmap(breakdown_koppen, "koppen", t)))
        jobs.append((f"map_R2_{short}.png", lambda t=t: plots.site_map(frame[frame["source"] == "this report"], t)))
    for e in experiments:
        picks = sites if sites else _example_sites(e.scores, GPP)
        tag = "_".join(e.key)
        for s in picks:
            if s not in e.predictions["site"].values:
                log.warning("%s: no prediction for site %s; no time-series plot", tag, s)
                continue
            jobs.append((f"timeseries_{tag}_{s}.png", lambda e=e, s=s: plots.timeseries(e.store, e.predictions, s, e.scores)))
    for name, make in progress_bar(jobs, desc="plots", unit="figure"):
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


def _write_index(out, experiments, summary, md, bad, pub_all, written, figures, notes=()) -> None:
    lines = ["# Zero-shot evaluation report", ""]
    min_days = sorted({int(e.scores.attrs["min_days"]) for e in experiments})
    fewest = " or ".join(str(m) for m in min_days)
    lines.append(
        f"Scores on the test sites of each split, on {ev.QC_RULE_TEXT} only. Per site: R², RMSE "
        "(gC m-2 d-1), nMAE (MAE / |site mean of observations|), RAE (MAE / MAE of the site-mean "
        f"predictor). Quantiles are across sites, with the number of sites beside them. Sites with "
        f"fewer than {fewest} QC = 1 days are not scored (per experiment below)."
    )
    protocols = sorted({e.key[3] for e in experiments})
    lines.append("")
    lines.append(f"Protocols: {', '.join(protocols)} (catalogs/protocols.yaml). Rankings compare runs of one "
                 "protocol only; the published baselines were produced under the reference protocol.")
    lines += ["", "## Experiments", "",
              "| experiment | protocol | runs | test sites | scored (GPP) | not scored | fewest QC = 1 days |",
              "|---|---|---|---|---|---|---|"]
    for e in experiments:
        s = e.scores
        n_scored = int((s["status"].sel(target=GPP) == 0).sum()) if GPP in s["target"].values else 0
        n_bad = int((s["status"] != 0).any("target").sum())
        lines.append(f"| {'/'.join(e.key)} | {e.key[3]} | {len(e.runs)} | {s.sizes['site']} | {n_scored} | {n_bad} | "
                     f"{s.attrs['min_days']} |")
    if notes:
        lines += ["", *notes]
    lines += ["", "## Summary", "", ev.markdown_table(md), ""]
    lines.append("n = sites with a score for that target (R² and RAE leave out sites with constant "
                 "observations, nMAE sites with a zero mean; exact counts per metric in summary.csv).")
    if pub_all is not None:
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
