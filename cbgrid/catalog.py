"""Readers for the versioned data in ``catalogs/``: feature sets, variable metadata, sites,
the published CarbonBench split membership and per-site scores, and the context rasters."""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cbgrid.errors import InputError, MissingError, UnknownError

log = logging.getLogger(__name__)

FEATURE_SETS = ("minimal", "standard", "full")


def _root():
    return resources.files("cbgrid.catalogs")


def path(name: str) -> Path:
    """Filesystem path of a catalog file (e.g. 'sites.csv', 'carbonbench/all_sites.csv')."""
    p = Path(str(_root().joinpath(name)))
    if not p.exists():
        raise MissingError(f"catalog file {name!r} is missing from the installed cbgrid ({p})")
    return p


def recipe_path(name: str) -> Path:
    """Filesystem path of a product recipe shipped with cbgrid (``products/*.yaml``)."""
    p = Path(str(resources.files("cbgrid.products").joinpath(name)))
    if not p.exists():
        shipped = sorted(q.name for q in p.parent.glob("*.yaml"))
        raise MissingError(f"no shipped recipe {name!r}; cbgrid ships {', '.join(shipped)}")
    return p


def recipes() -> list[Path]:
    """Every product recipe shipped with cbgrid."""
    return sorted(Path(str(resources.files("cbgrid.products"))).glob("*.yaml"))


@functools.lru_cache(maxsize=1)
def demo_config() -> dict:
    """The demo's store, split, models and recipe per variant ('full', 'quick'): ``catalogs/demo.yaml``."""
    with open(path("demo.yaml")) as f:
        return yaml.safe_load(f)


def raster_path(name: str) -> Path:
    return path(f"rasters/{name}")


@functools.lru_cache(maxsize=1)
def _feature_doc() -> dict:
    with open(path("feature_sets.yaml")) as f:
        return yaml.safe_load(f)


def catalog_version() -> str:
    return str(_feature_doc()["version"])


def era5_bands(feature_set: str = "minimal") -> list[str]:
    """The ERA5-Land DAILY_AGGR bands of a feature set ('minimal' 6, 'standard' 36, 'full' 150)."""
    sets = _feature_doc()["era5_land"]
    if feature_set not in sets:
        raise InputError(f"unknown feature set {feature_set!r}; choose one of {', '.join(sets)}")
    return list(sets[feature_set])


def modis_bands() -> list[str]:
    """The 12 MODIS MOD09GA features used with every feature set."""
    return list(_feature_doc()["modis"])


def features(feature_set: str = "minimal") -> list[str]:
    """Dynamic input variables of a feature set: its ERA5-Land bands, then the MODIS features."""
    return era5_bands(feature_set) + modis_bands()


def static_features() -> list[str]:
    return list(_feature_doc()["static"])


@functools.lru_cache(maxsize=1)
def variables() -> pd.DataFrame:
    """Variable metadata indexed by store name: source, collection, band, units, scale, ..."""
    df = pd.read_csv(path("variables.csv"), keep_default_na=False)
    return df.set_index("name")


def bounds(name: str) -> tuple[float, float]:
    """Physically plausible (valid_min, valid_max) of variable ``name``; ±inf where none is set.

    Values outside them are refused by the readers (a unit mix-up, a fill value or a corrupt
    file, not a measurement).

    >>> bounds("NEE_VUT_USTAR50_QC")
    (0.0, 1.0)
    """
    row = variable(name)
    lo, hi = (str(row.get(k, "")).strip() for k in ("valid_min", "valid_max"))
    return (float(lo) if lo else -np.inf, float(hi) if hi else np.inf)


def variable(name: str) -> dict:
    v = variables()
    if name not in v.index:
        raise UnknownError(f"variable {name!r} is not in catalogs/variables.csv")
    return v.loc[name].to_dict()


@functools.lru_cache(maxsize=1)
def _sites() -> pd.DataFrame:
    return pd.read_csv(path("sites.csv"), keep_default_na=False, na_values={"lat": [""], "lon": [""], "elevation_m": [""]})


SITE_TABLE_COLUMNS = ("site", "lat", "lon", "igbp")


def read_site_table(path) -> pd.DataFrame:
    """A user's site table (CSV with columns site, lat, lon, igbp; koppen, koppen_detailed,
    network optional), or an error naming the file and what it lacks."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"no site table at {path}")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"site": str})
    except pd.errors.EmptyDataError as e:
        raise InputError(f"{path}: the site table is empty; write a header site,lat,lon,igbp and one row per site") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({' '.join(str(e).split())[:160]})") from e
    missing = [c for c in SITE_TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: the site table lacks column(s) {missing}; it needs {list(SITE_TABLE_COLUMNS)} "
                         "(koppen, koppen_detailed, network optional)")
    for c in ("lat", "lon"):
        values = pd.to_numeric(df[c], errors="coerce")
        lim = 90 if c == "lat" else 180
        bad = values.isna() | (values.abs() > lim)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"{path}: row {i + 2}: {c} = {df[c].iloc[i]} is not a {c} in [-{lim}, {lim}] degrees")
        df[c] = values
    return df


def sites() -> pd.DataFrame:
    """The site catalog: site, country, lat, lon, elevation_m, igbp, koppen, koppen_detailed, network."""
    return _sites().copy()


def official_test_sites(split: str) -> pd.DataFrame:
    """The published CarbonBench test sites of the 'igbp' or 'koppen' split (site, IGBP, Koppen)."""
    key = {"igbp": "IGBP", "koppen": "Koppen"}.get(split.lower().removeprefix("official-"))
    if key is None:
        raise InputError(f"official splits are 'igbp' and 'koppen', not {split!r}")
    return pd.read_csv(path(f"carbonbench/official_{key}_test_sites.csv"), keep_default_na=False)


def carbonbench_sites() -> pd.DataFrame:
    """The 474 sites of the published CarbonBench v2 data."""
    return pd.read_csv(path("carbonbench/all_sites.csv"), keep_default_na=False)


def published_scores() -> pd.DataFrame:
    """Published per-site zero-shot scores of every CarbonBench baseline (12,972 rows)."""
    return pd.read_csv(path("carbonbench/published_site_scores.csv"))


def reference_validation_curves() -> pd.DataFrame:
    """The validation RMSE (standardised targets) logged while the published XGBoost and
    LightGBM of the Köppen split (minimal features) trained: model, target (``all`` for XGBoost's
    one booster of the three targets), rounds built, val_rmse, and ``kept``, the round the
    published predictions used."""
    return pd.read_csv(path("carbonbench/reference_validation_curves.csv"))


@functools.lru_cache(maxsize=1)
def _hyper_doc() -> dict:
    with open(path("hyperparameters.yaml")) as f:
        return yaml.safe_load(f)["models"]


def _split_key(split: str) -> str:
    return str(split).lower().removeprefix("official-")


def hyperparameters(model: str, split: str = "koppen") -> dict:
    """Published hyperparameters of ``model`` for ``split`` from ``catalogs/hyperparameters.yaml``.

    ``split`` is 'igbp' or 'koppen' ('official-*' map to them); models without a published row
    give {}.

    >>> hyperparameters("ctlstm", "koppen")
    {'hidden': 256, 'dropout': 0.3, 'layers': 2, 'lr': 0.0005}
    """
    rows = _hyper_doc().get(model, {})
    return dict(rows.get(_split_key(split), rows.get("all", {})))


def hyperparameter_provenance(model: str, split: str = "koppen") -> dict | None:
    """The cross-validation figures behind ``hyperparameters(model, split)``, if published."""
    return (_hyper_doc().get(model, {}).get("cv") or {}).get(_split_key(split))
