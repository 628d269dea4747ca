"""Figures for score reports: per-site metric distributions, class × model heatmaps, a map of
test sites, and observed vs predicted time series.

The only module that imports matplotlib (the ``plots`` extra), imported on first use with the
non-interactive Agg backend. Each function takes tables or Datasets and returns a Figure;
``save`` writes it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import context, product, schema
from cbgrid.errors import InputError
from cbgrid.evaluation import TARGET_LABELS

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "R2": "R²",
    "RMSE": f"RMSE ({schema.TARGET_UNITS})",
    "nMAE": "nMAE (MAE / |site mean|)",
    "RAE": "RAE (MAE / MAE of site mean)",
}
#: Axis limits that keep the bulk readable; values beyond are drawn at the edge and counted.
METRIC_LIMITS = {"R2": (-1.0, 1.0), "nMAE": (0.0, 3.0), "RAE": (0.0, 3.0)}


@functools.lru_cache(maxsize=1)
def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "plots need matplotlib: pip install 'cbgrid[plots]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _horizontal() -> dict:
    """Horizontal box plots: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def save(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 150 dpi) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    _plt().close(fig)
    return path


def _label(row) -> str:
    fs = row.get("feature_set", "")
    src = " [published]" if row.get("source") == "published" else ""
    return f"{row['model']} ({fs}){src}" if fs and fs != "unknown" else f"{row['model']}{src}"


def _model_labels(frame: pd.DataFrame) -> pd.Series:
    return frame.apply(_label, axis=1)


def metric_distributions(frame: pd.DataFrame, target: str, metrics: Sequence[str] = ("R2", "RMSE", "nMAE")):
    """Box plots of per-site scores per model for one target (one panel per metric).

    ``frame`` is a per-site table (``evaluation.to_frame`` rows, optionally with published rows
    and a ``source`` column). Points beyond the axis limits are counted in the panel title.
    """
    plt = _plt()
    f = frame[frame["target"] == target].copy()
    f["label"] = _model_labels(f)
    labels = list(dict.fromkeys(f["label"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(labels) + 1.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        data = [f.loc[f["label"] == lab, m].dropna().to_numpy() for lab in labels]
        lo, hi = METRIC_LIMITS.get(m, (None, None))
        outside = sum(int(np.sum(d < lo) + np.sum(d > hi)) for d in data) if lo is not None else 0
        shown = [np.clip(d, lo, hi) if lo is not None else d for d in data]
        ax.boxplot(shown, widths=0.6, showfliers=True, flierprops={"markersize": 2, "alpha": 0.5}, **_horizontal())
        ax.set_yticks(range(1, len(labels) + 1), labels if ax is axes[0][0] else [""] * len(labels))
        ax.invert_yaxis()
        ax.set_xlabel(METRIC_LABELS.get(m, m))
        ax.grid(axis="x", alpha=0.3)
        if lo is not None:
            ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        n = [len(d) for d in data]
        title = f"n = {min(n)}–{max(n)} sites" if min(n) != max(n) else f"n = {n[0]} sites"
        if outside:
            title += f"; {outside} beyond axis, drawn at edge"
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{TARGET_LABELS.get(target, target)}: per-site zero-shot scores on test sites (QC = 1 days)", fontsize=11)
    fig.tight_layout()
    return fig


def class_heatmap(table: pd.DataFrame, by: str, target: str, metric: str = "R2"):
    """Class × model heatmap of the median of ``metric`` across the sites of each class.

    ``table`` is an ``evaluate.breakdown`` table (optionally with published rows and
    ``source``); each cell shows the median and the number of sites.
    """
    plt = _plt()
    t = table[(table["target"] == target) & (table["metric"] == metric)].copy()
    t["label"] = _model_labels(t)
    med = t.pivot_table(index=by, columns="label", values="p50", sort=False)
    n = t.pivot_table(index=by, columns="label", values="n_sites", sort=False)
    med = med.sort_index()
    n = n.reindex(index=med.index, columns=med.columns)
    fig, ax = plt.subplots(figsize=(1.1 * med.shape[1] + 2.5, max(3.5, 0.55 * med.shape[0] + 2.4)))
    lo, hi = METRIC_LIMITS.get(metric, (np.nanmin(med.values), np.nanmax(med.values)))
    cmap = "RdYlBu" if metric == "R2" else "RdYlBu_r"
    im = ax.imshow(np.clip(med.values, lo, hi), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    for (i, j), v in np.ndenumerate(med.values):
        if np.isfinite(v):
            dark = abs((np.clip(v, lo, hi) - lo) / (hi - lo) - 0.5) > 0.32
            ax.text(j, i, f"{v:.2f}\nn={int(n.values[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(med.shape[1]), med.columns, rotation=35, ha="right")
    ax.set_yticks(range(med.shape[0]), med.index)
    ax.set_ylabel({"igbp": "IGBP class", "koppen": "Köppen class"}.get(by, by))
    fig.colorbar(im, ax=ax, label=f"median {METRIC_LABELS.get(metric, metric)}", shrink=0.8)
    ax.set_title(f"{TARGET_LABELS.get(target, target)}: median {METRIC_LABELS.get(metric, metric)} per class "
                 "across test sites", fontsize=10)
    fig.tight_layout()
    return fig


@functools.lru_cache(maxsize=1)
def _land(step: float = 0.5) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Land mask on a ``step``° grid from the shipped MCD12C1 IGBP raster (no cartopy needed)."""

    lat = np.arange(90 - step / 2, -90, -step)
    lon = np.arange(-180 + step / 2, 180, step)
    lon2, lat2 = np.meshgrid(lon, lat)
    code = context.igbp_at(lat2.ravel(), lon2.ravel()).reshape(lat2.shape)
    return (code != 0) & (code != context.IGBP_NODATA), (-180, 180, -90, 90)


def site_map(frame: pd.DataFrame, target: str, metric: str = "R2"):
    """Test sites on a world land mask, coloured by ``metric``; one panel per model."""
    plt = _plt()
    f = frame[frame["target"] == target].copy()
    f["label"] = _model_labels(f)
    labels = list(dict.fromkeys(f["label"]))
    ncol = min(2, len(labels))
    nrow = int(np.ceil(len(labels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol + 1.0, 3.1 * nrow + 0.6), squeeze=False, layout="constrained")
    land, extent = _land()
    lo, hi = METRIC_LIMITS.get(metric, (float(np.nanmin(f[metric])), float(np.nanmax(f[metric]))))
    cmap = "RdYlBu" if metric == "R2" else "RdYlBu_r"
    sc = None
    for ax, lab in zip(axes.ravel(), labels):
        g = f[f["label"] == lab]
        ax.imshow(np.where(land, 1.0, np.nan), extent=extent, cmap="Greys", vmin=0, vmax=4, interpolation="nearest")
        ok = g[metric].notna()
        sc = ax.scatter(g.loc[ok, "lon"], g.loc[ok, "lat"], c=np.clip(g.loc[ok, metric], lo, hi), cmap=cmap,
                        vmin=lo, vmax=hi, s=28, edgecolors="k", linewidths=0.4, zorder=3)
        if (~ok).any():
            ax.scatter(g.loc[~ok, "lon"], g.loc[~ok, "lat"], marker="x", c="k", s=18, zorder=3, label="not scored")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_xlim(-180, 180)
        ax.set_ylim(-60, 85)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_title(f"{lab}: {int(ok.sum())} test sites", fontsize=10)
    for ax in axes.ravel()[len(labels):]:
        ax.set_visible(False)
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), label=f"{METRIC_LABELS.get(metric, metric)} (clipped to [{lo:g}, {hi:g}])",
                     shrink=0.8, extend="both")
    fig.suptitle(f"{TARGET_LABELS.get(target, target)}: {METRIC_LABELS.get(metric, metric)} at test sites", fontsize=11)
    return fig


def timeseries(store: xr.Dataset, predictions: xr.Dataset, site: str, scores: xr.Dataset | None = None):
    """Observed vs predicted GPP, RECO and NEE at one site, low-QC days shaded.

    Days with ``NEE_VUT_USTAR50_QC < 1`` (or no QC) are shaded grey: they are not scored.
    The ensemble spread (``prediction_std``) is drawn as a band when present.
    """
    plt = _plt()
    pred = predictions["prediction"].sel(site=site)
    times = store.indexes["time"].intersection(pred.indexes["time"])
    obs = store.sel(site=site, time=times)
    qc = obs[schema.QC].values
    targets = [t for t in schema.TARGETS if t in pred["target"].values and t in store]
    fig, axes = plt.subplots(len(targets), 1, figsize=(11, 2.4 * len(targets) + 0.6), sharex=True, squeeze=False)
    low = ~(qc == 1)
    tt = times.values
    for ax, target in zip(axes[:, 0], targets):
        y = obs[target].values
        p = pred.sel(target=target, time=times).values
        ax.fill_between(tt, 0, 1, where=low, step="mid", transform=ax.get_xaxis_transform(),
                        color="0.88", lw=0, zorder=0, label="QC < 1 (not scored)")
        ax.plot(tt, np.where(low, np.nan, y), ".", ms=2.5, color="k", label="observed (QC = 1)", zorder=2)
        ax.plot(tt, np.where(low, y, np.nan), ".", ms=2.0, color="0.55", label="observed (QC < 1, not scored)", zorder=2)
        ax.plot(tt, p, "-", lw=0.9, color="tab:red", label="predicted", zorder=3)
        if "prediction_std" in predictions:
            s = predictions["prediction_std"].sel(site=site, target=target, time=times).values
            ax.fill_between(tt, p - s, p + s, color="tab:red", alpha=0.2, lw=0, label="± ensemble std", zorder=1)
        title = TARGET_LABELS.get(target, target)
        if scores is not None and site in scores["site"].values:
            sc = scores["score"].sel(site=site, target=target)
            shown = [m for m in ("R2", "RMSE", "nMAE") if m in sc["metric"].values]
            title += "   " + "   ".join(f"{m.replace('R2', 'R²')} = {float(sc.sel(metric=m)):.2f}" for m in shown)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(schema.TARGET_UNITS)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, markerscale=3, frameon=False)
    model = predictions.attrs.get("model", "model")
    igbp = schema.decode("igbp", [store["igbp"].sel(site=site).item()])[0] if "igbp" in store.coords else ""
    fig.suptitle(f"{site} ({igbp}): observed vs {model}", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig

# --------------------------------------------------------------------------------------------
# Product quicklooks (used by cbgrid.upscale)
# --------------------------------------------------------------------------------------------


def quicklook(da: xr.DataArray, path, *, title: str | None = None, cmap: str | None = None) -> Path:
    """A (lat, lon) map of one product layer as a PNG: filled cells grey, robust colour range.

    Fluxes that change sign (NEE) get a diverging map centred on zero; uncertainty layers and
    GPP/RECO a sequential one. Returns the PNG path.
    """
    plt = _plt()
    da = da.squeeze()
    if set(da.dims) != {"lat", "lon"}:
        raise InputError(f"quicklook draws (lat, lon) maps; got dims {da.dims}")
    da = da.transpose("lat", "lon").sortby("lat")
    vals = np.asarray(da.values, dtype=float)
    lat, lon = da["lat"].values, da["lon"].values
    ok = np.isfinite(vals)
    lo, hi = (np.percentile(vals[ok], [2, 98]) if ok.any() else (0.0, 1.0))
    diverging = lo < 0 < hi
    if diverging:
        lim = max(abs(lo), abs(hi))
        lo, hi = -lim, lim
    cmap = cmap or ("RdBu_r" if diverging else "viridis")
    dy = abs(lat[1] - lat[0]) / 2 if lat.size > 1 else 0.5
    dx = abs(lon[1] - lon[0]) / 2 if lon.size > 1 else 0.5
    extent = (lon[0] - dx, lon[-1] + dx, lat[0] - dy, lat[-1] + dy)
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-9)
    fig, ax = plt.subplots(figsize=(10, max(2.5, 10 * aspect) + 0.8), layout="constrained")
    ax.set_facecolor("0.85")
    im = ax.imshow(np.where(ok, vals, np.nan), origin="lower", extent=extent, cmap=cmap, vmin=lo, vmax=hi,
                   interpolation="nearest")
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    units = da.attrs.get("units", "")
    fig.colorbar(im, ax=ax, shrink=0.85, extend="both", label=f"{da.attrs.get('long_name', da.name)} ({units})")
    ax.set_title(title or str(da.name), fontsize=10)
    return save(fig, path)


def quicklooks(path) -> list[Path]:
    """One PNG per flux variable (period mean) beside a product file."""

    path = Path(path)
    out = []
    with product.open_product(path) as ds:
        for name in (*product.FLUXES, *(f"{f}_sd" for f in product.FLUXES)):
            png = path.with_name(f"{path.stem}_{name}.png")
            quicklook(ds[name].mean("time", keep_attrs=True), png, title=f"{path.stem}: {name} (period mean)")
            out.append(png)
    return out


def comparison_maps(maps: xr.Dataset, variable: str):
    """Bias, RMSE and correlation maps of a model against a product (``cbgrid.compare``)."""
    plt = _plt()
    panels = [("bias", "RdBu_r", True), ("rmse", "viridis", False), ("correlation", "RdBu_r", True)]
    fig, axes = plt.subplots(3, 1, figsize=(9, 11), layout="constrained")
    for ax, (kind, cmap, centred) in zip(axes, panels):
        da = maps[f"{variable}_{kind}"].transpose("lat", "lon").sortby("lat")
        vals = np.asarray(da.values, dtype=float)
        ok = np.isfinite(vals)
        lo, hi = (np.percentile(vals[ok], [2, 98]) if ok.any() else (0.0, 1.0))
        if kind == "correlation":
            lo, hi = -1.0, 1.0
        elif centred:
            lim = max(abs(lo), abs(hi), 1e-9)
            lo, hi = -lim, lim
        lat, lon = da["lat"].values, da["lon"].values
        dy = abs(lat[1] - lat[0]) / 2 if lat.size > 1 else 0.5
        dx = abs(lon[1] - lon[0]) / 2 if lon.size > 1 else 0.5
        ax.set_facecolor("0.85")
        im = ax.imshow(np.where(ok, vals, np.nan), origin="lower", cmap=cmap, vmin=lo, vmax=hi,
                       extent=(lon[0] - dx, lon[-1] + dx, lat[0] - dy, lat[-1] + dy), interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.85, label=f"{kind} ({da.attrs.get('units', '')})")
        ax.set_title(f"{variable} {kind}: {maps.attrs.get('model', 'model')} vs product ({maps.attrs.get('period', '')})",
                     fontsize=10)
    return fig
