"""Site hold-out splits of the CarbonBench protocol.

* ``igbp``: stratified by IGBP class — half of a class's sites are test sites when it has at
  most 10 sites (floor(n/2)), a fifth otherwise (round(n/5)); every class with ≥ 2 sites is on
  both sides. These rules reproduce the paper's per-class counts.
* ``koppen``: stratified by Köppen main class, a fifth of each class (round(n/5), ≥ 1).
* ``official-igbp`` / ``official-koppen``: the published CarbonBench test membership. The
  published lists hold only the held-out sites that got a score (92 of 95 Köppen, 96 of ~103
  IGBP), so the others are found with the reference method on this store's sites of the
  published benchmark (``catalogs/carbonbench/all_sites.csv``): such a site that is not listed
  but that the reference split puts in test is *excluded* (set ``excluded``: neither trained on nor scored),
  so no held-out site is ever trained on. Sites outside the published benchmark were never held
  out and train.

``method="reference"`` (``igbp`` / ``koppen``) is the reference implementation's algorithm
exactly (``split_targets`` of CarbonFluxBench at b5d643a, :func:`reference_test_sites`): the
site table sorted by site, scikit-learn ``train_test_split(test_size=0.2, stratify=...,
random_state=56)``, and for IGBP classes with at most 10 sites pandas
``sample(n // 2, random_state=56)``. On the published data it gives the published membership.

Train sites also get 5 cross-validation folds stratified by Köppen. Everything is a pure
function of the site table and the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema
from cbgrid.atomic import replace_file
from cbgrid.errors import InputError, MissingError
from cbgrid.schema import SchemaError

log = logging.getLogger(__name__)

KINDS = ("igbp", "koppen", "official-igbp", "official-koppen")
METHODS = ("cbgrid", "reference")
SETS = ("train", "test", "excluded")
#: The reference's fixed seed ("do not change the random state").
REFERENCE_SEED = 56
COLUMNS = ["site", "split", "seed", "set", "fold", "igbp", "koppen"]
N_FOLDS = 5


def site_table(store_or_sites) -> pd.DataFrame:
    """site, igbp, koppen (class names) from a store Dataset or a site table."""
    if isinstance(store_or_sites, xr.Dataset):
        ds = store_or_sites
        return pd.DataFrame({
            "site": [str(s) for s in ds[schema.SITE].values],
            "igbp": schema.class_names(ds, "igbp"),
            "koppen": schema.class_names(ds, "koppen"),
        })
    df = pd.DataFrame(store_or_sites)[["site", "igbp", "koppen"]].copy()
    df["site"] = df["site"].astype(str)
    return df


def _n_test(n: int, by: str) -> int:
    if n < 2:
        return 0
    frac_small = by == "igbp" and n <= 10
    k = n // 2 if frac_small else int(np.floor(n / 5 + 0.5))
    return min(max(k, 1), n - 1)


def _folds(train: pd.DataFrame, rng: np.random.Generator, n_folds: int) -> pd.Series:
    """Köppen-stratified fold labels: each class dealt round-robin from a rotating offset."""
    fold = pd.Series(-1, index=train.index, dtype=int)
    offset = 0
    for _, grp in train.groupby("koppen", sort=True):
        idx = rng.permutation(grp.index.to_numpy())
        fold.loc[idx] = (np.arange(idx.size) + offset) % n_folds
        offset = (offset + idx.size) % n_folds
    return fold


def reference_test_sites(sites: pd.DataFrame, by: str, random_state: int = REFERENCE_SEED) -> list[str]:
    """The test sites of the reference's ``split_targets(split_type=...)`` on a site table
    (columns site, igbp, koppen; one row per site), in the reference's own calls and order.
    ``random_state`` is the reference's fixed 56; another value draws another split of the same
    algorithm.

    >>> t = pd.DataFrame({"site": [f"S{i:02d}" for i in range(10)], "igbp": ["ENF"] * 10, "koppen": list("CD" * 5)})
    >>> len(reference_test_sites(t, "koppen")), len(reference_test_sites(t, "igbp"))
    (2, 5)
    """
    from sklearn.model_selection import train_test_split

    rs = int(random_state)
    # df.groupby('site').agg({'Koppen': 'first', 'IGBP': 'first'}).reset_index()
    site_meta = pd.DataFrame({"site": sites["site"].astype(str).to_numpy(), "Koppen": sites["koppen"].to_numpy(),
                              "IGBP": sites["igbp"].to_numpy()}).sort_values("site").reset_index(drop=True)
    try:
        if by == "igbp":
            igbp_counts = site_meta.IGBP.value_counts()
            rare_igbp = igbp_counts[igbp_counts <= 10].index.tolist()
            test_sites: list[str] = []
            for igbp in rare_igbp:
                picked = site_meta[site_meta.IGBP == igbp].sample(igbp_counts[igbp] // 2, random_state=rs)
                test_sites.extend(picked.site)
            remaining = site_meta[~site_meta.IGBP.isin(rare_igbp)]
            if len(remaining):
                _, test_str = train_test_split(remaining.site, test_size=0.2, stratify=remaining.IGBP, random_state=rs)
                test_sites.extend(test_str)
            return test_sites
        if by == "koppen":
            _, test_sites = train_test_split(site_meta.site, test_size=0.2, stratify=site_meta.Koppen, random_state=rs)
            return list(test_sites)
    except ValueError as e:  # scikit-learn: a class with one site, or fewer test slots than classes
        raise InputError(f"the reference {by} split cannot stratify these {len(site_meta)} sites: {e}") from e
    raise InputError(f"the reference method splits by 'igbp' or 'koppen', not {by!r}")


def _official(sites: pd.DataFrame, by: str) -> pd.Series:
    """'test' / 'train' / 'excluded' per site of an official split (see the module doc)."""
    listed = set(catalog.official_test_sites(by)["site"])
    test = sites["site"].isin(listed)
    if not test.any():
        raise InputError(f"none of the {len(sites)} sites is a published {by} test site")
    # the reference split of the published benchmark's sites in this store (on the published data: its own split)
    in_benchmark = sites["site"].isin(set(catalog.carbonbench_sites()["site_code"]))
    held = set(reference_test_sites(sites[in_benchmark], by.removeprefix("official-"))) if in_benchmark.any() else set()
    excluded = ~test & in_benchmark & sites["site"].isin(held)
    log.info("%s: %d of the %d published test sites are in this store; %d held-out site(s) without a published "
             "score excluded (neither trained on nor scored)%s", by, int(test.sum()), len(listed), int(excluded.sum()),
             f": {', '.join(sites.loc[excluded, 'site'])}" if excluded.any() else "")
    return pd.Series(np.where(test, "test", np.where(excluded, "excluded", "train")), index=sites.index)


def make_split(store_or_sites, by: str = "koppen", seed: int = 0, n_folds: int = N_FOLDS, *,
               method: str = "cbgrid", reference_seed: int = REFERENCE_SEED) -> pd.DataFrame:
    """Assign every site to train or test (and train sites to CV folds) — see module doc.

    ``method='reference'`` splits ``igbp``/``koppen`` with the reference's algorithm; its seed is
    ``reference_seed``, not ``seed``: the reference's fixed 56 unless another is asked for (to
    measure how much a figure moves from one draw of the algorithm to another). It is recorded in
    the ``seed`` column and also deals the CV folds.
    """
    if by not in KINDS:
        raise InputError(f"unknown split {by!r}; choose one of {', '.join(KINDS)}")
    if method not in METHODS:
        raise InputError(f"unknown split method {method!r}; choose one of {', '.join(METHODS)}")
    sites = site_table(store_or_sites).sort_values("site").reset_index(drop=True)
    if sites.empty:
        raise InputError("no sites to split")
    if method == "reference" and not by.startswith("official-"):
        seed = int(reference_seed)
    rng = np.random.default_rng(seed)
    test = pd.Series(False, index=sites.index)
    sets = None
    if by.startswith("official-"):
        sets = _official(sites, by)
    elif method == "reference":
        test = sites["site"].isin(reference_test_sites(sites, by, seed))
    else:
        key = "igbp" if by == "igbp" else "koppen"
        for cls, grp in sites.groupby(key, sort=True):
            k = _n_test(len(grp), by)
            if k == 0:
                log.warning("%s class %s has a single site (%s): it stays in train", key, cls, grp["site"].iloc[0])
                continue
            picked = rng.choice(grp.index.to_numpy(), size=k, replace=False)
            test.loc[picked] = True
    out = sites.assign(split=by, seed=seed, set=np.where(test, "test", "train") if sets is None else sets.to_numpy())
    train = out[out["set"] == "train"]
    if train.empty:
        raise InputError(f"the {by} split leaves no training sites")
    folds = _folds(train, rng, n_folds)
    out["fold"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out.loc[folds.index, "fold"] = folds.to_numpy()
    return out[COLUMNS]


def write_split(df: pd.DataFrame, path) -> Path:
    """Write a split as CSV (columns site,split,seed,set,fold,igbp,koppen), atomically."""
    path = Path(path)
    check(df)
    with replace_file(path) as tmp:
        df[COLUMNS].to_csv(tmp, index=False)
    return path


def read_split(path) -> pd.DataFrame:
    """A split CSV written by :func:`write_split` (or by hand), checked with :func:`check`."""
    path = Path(path)
    if not path.exists():
        raise MissingError(f"no split file at {path}")
    try:
        df = pd.read_csv(path, dtype={"site": str, "fold": "Int64"}, keep_default_na=False, na_values={"fold": [""]})
    except pd.errors.EmptyDataError as e:
        raise SchemaError(f"{path}: the file is empty; write it with `cbgrid split`") from e
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: not a readable split CSV ({' '.join(str(e).split())[:200]})") from e
    return check(df, where=str(path))


def check(df: pd.DataFrame, where: str = "split") -> pd.DataFrame:
    """``df`` if it is a consistent split, else SchemaError naming what contradicts what.

    A split has columns :data:`COLUMNS`, one ``split`` label and one seed, sets ``train``/``test``
    (``excluded``: held out of both)
    with at least one site each, unique sites, folds only on train sites, and, when labelled
    ``official-*``, exactly the published test sites among its sites.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; expected {COLUMNS}")
    if df.empty:
        raise SchemaError(f"{where}: the split lists no sites (a header only); write it with `cbgrid split`")
    bad = sorted(set(df["set"]) - set(SETS))
    if bad:
        raise SchemaError(f"{where}: column 'set' must be 'train', 'test' or 'excluded', found {bad}")
    if df["site"].duplicated().any():
        raise SchemaError(f"{where}: duplicate site(s) {df.loc[df['site'].duplicated(), 'site'].tolist()[:5]}")
    for col in ("split", "seed"):
        values = sorted({str(v) for v in df[col]})
        if len(values) > 1:
            raise SchemaError(f"{where}: column {col!r} must hold one value, found {values}; one file holds one split")
    for side in ("test", "train"):
        if not (df["set"] == side).any():
            raise SchemaError(
                f"{where}: the split has no {side} sites; a site hold-out needs both (fewer classes or sites "
                "than the split needs: add sites, or pick another --by)"
            )
    folded = df["fold"].notna() & (df["set"] == "test")
    if folded.any():
        raise SchemaError(f"{where}: test site(s) {df.loc[folded, 'site'].tolist()[:5]} have a CV fold; folds are for train sites only")
    label = str(df["split"].iloc[0])
    if label.startswith("official-") and label in KINDS:
        official = set(catalog.official_test_sites(label)["site"])
        listed = set(df.loc[df["set"] == "test", "site"])
        wrong = sorted(listed - official) + sorted(official & set(df.loc[df["set"] == "train", "site"]))
        if wrong:
            raise SchemaError(
                f"{where}: labelled {label!r} but site(s) {wrong[:5]} are on the other side of the published "
                f"membership; rewrite it with `cbgrid split --by {label}` or give it another label"
            )
    return df


def train_sites(df: pd.DataFrame) -> list[str]:
    return df.loc[df["set"] == "train", "site"].tolist()


def test_sites(df: pd.DataFrame) -> list[str]:
    return df.loc[df["set"] == "test", "site"].tolist()


def folds(df: pd.DataFrame) -> list[tuple[list[str], list[str]]]:
    """(fit sites, validation sites) for each CV fold of the train sites."""
    train = df[df["set"] == "train"]
    return [
        (train.loc[train["fold"] != k, "site"].tolist(), train.loc[train["fold"] == k, "site"].tolist())
        for k in sorted(train["fold"].dropna().unique())
    ]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per-class train/test counts (like the paper's split tables)."""
    key = "igbp" if df["split"].iloc[0].endswith("igbp") else "koppen"
    cols = list(SETS) if (df["set"] == "excluded").any() else ["train", "test"]
    t = pd.crosstab(df[key], df["set"]).reindex(columns=cols, fill_value=0)
    t.insert(0, "raw", t.sum(axis=1))
    t.loc["Total"] = t.sum()
    return t
