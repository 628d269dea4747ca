"""Builders and assertions for testing code that uses cbgrid (its own suite uses them too).

Small deterministic stand-ins for every stage's input, each following the stage contracts:

* :func:`site_store` — a schema-conformant (site, time) store Dataset with random targets;
* :func:`predictions` — the predictions contract for a store's sites;
* :func:`banded_context` / :func:`random_context` — grid contexts without reading the rasters;
* :func:`random_fluxes` — (time, lat, lon) fluxes for the product writer;
* :func:`cmip_model` — a CMIP6-style model output (``gpp``, ``ra``, ``rh``, ``nep``…) from the
  twin's true fluxes, in any calendar, units, longitude convention and time step;
* :class:`StubPredictor` — a ``cbgrid.contracts.Predictor`` with a light/temperature response;
* :class:`MemoryWriter` — a ``cbgrid.contracts.BlockWriter`` that keeps the blocks in memory;
* :func:`carbonbench_folder` — a small folder in the published CarbonBench layout, with traps;
* :func:`assert_product_ok`, :func:`assert_predictions_ok` — the checks a product or a
  predictions Dataset must pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, product, schema
from cbgrid import units as cunits
from cbgrid.grid import Grid, cell_area
from cbgrid.schema import GPP, NEE, QC, RECO, TARGETS
from cbgrid.sources import twin


def site_store(n_sites: int = 6, start="2010-01-01", days: int = 60, seed: int = 0, *, sites: Sequence[str] | None = None,
               qc_fraction: float | None = None, gaps: float = 0.0, extra: Sequence[str] = ("temperature_2m",)) -> xr.Dataset:
    """A small store Dataset on catalog sites with random targets (NEE = RECO − GPP) and QC.

    ``qc_fraction``: share of QC = 1 days (the rest uniform in [0, 1)); None: QC ∈ {0.5, 1}.
    ``gaps``: share of GPP days set missing. ``extra``: feature variables filled with noise.

    >>> ds = site_store(n_sites=3, days=10)
    >>> dict(ds.sizes)
    {'site': 3, 'time': 10}
    """
    rng = np.random.default_rng(seed)
    cat = catalog.sites()
    table = cat.iloc[:n_sites] if sites is None else cat.set_index("site").loc[list(sites)].reset_index()
    table = table.reset_index(drop=True)
    n = len(table)
    time = pd.date_range(start, periods=days, freq="D")
    gpp = rng.gamma(2.0, 2.0, (n, days))
    reco = rng.gamma(2.0, 1.5, (n, days))
    if qc_fraction is None:
        qc = rng.choice([0.5, 1.0], (n, days))
    else:
        qc = np.where(rng.random((n, days)) < qc_fraction, 1.0, rng.uniform(0, 0.99, (n, days)))
    data = {GPP: gpp, RECO: reco, NEE: reco - gpp, QC: qc}
    if gaps:
        data[GPP][rng.random((n, days)) < gaps] = np.nan
    for name in extra:
        data[name] = 280 + 10 * rng.standard_normal((n, days)) if name == "temperature_2m" else rng.random((n, days))
    return schema.site_dataset(data, table, time)


def predictions(store: xr.Dataset, noise: float = 1.0, seed: int = 1, **attrs) -> xr.Dataset:
    """The predictions contract for every site and day of ``store``: observations plus noise.

    >>> p = predictions(site_store(n_sites=2, days=5))
    >>> p["prediction"].dims
    ('site', 'time', 'target')
    """
    rng = np.random.default_rng(seed)
    obs = store[list(TARGETS)].to_dataarray("target").transpose("site", "time", "target")
    pred = obs.fillna(0.0) + rng.normal(0, noise, obs.shape)
    pred = pred.drop_vars([c for c in pred.coords if c not in ("site", "time", "target")])
    base = dict(model="toy", split="igbp", feature_set="minimal", seeds="0", run="r0")
    base.update(attrs)
    ds = xr.Dataset({"prediction": pred.astype(np.float32)}, attrs=base)
    ds["prediction"].attrs["units"] = schema.TARGET_UNITS
    return ds


def assert_predictions_ok(ds: xr.Dataset) -> None:
    """Fail unless ``ds`` follows the predictions contract (docs/architecture.md)."""
    assert "prediction" in ds, f"no 'prediction' variable: {list(ds.data_vars)}"
    assert ds["prediction"].dims == ("site", "time", "target"), ds["prediction"].dims
    assert ds["prediction"].dtype == np.float32
    assert [str(t) for t in ds["target"].values] == list(TARGETS)
    assert ds["prediction"].attrs.get("units") in (schema.TARGET_UNITS, schema.CF_FLUX_UNITS)
    for c in ("lat", "lon", "igbp", "koppen"):
        assert c in ds.coords, f"site coordinate {c} missing"


def banded_context(grid: Grid) -> xr.Dataset:
    """A deterministic grid context: an ocean band (|lon| < 40), an ice cap (lat < −60), land
    classes by latitude elsewhere."""
    lat, lon = grid.lat, grid.lon
    la = np.broadcast_to(lat[:, None], (lat.size, lon.size))
    lo = np.broadcast_to(lon[None, :], (lat.size, lon.size))
    igbp = np.where(np.abs(lo) < 40, 0, np.where(la < -60, 15, 1 + (np.abs(la).astype(int) // 10) % 14)).astype(np.int16)
    koppen = np.where(igbp == 0, 0, 1 + (np.abs(la).astype(int) // 20) % 5).astype(np.int16)
    return xr.Dataset(
        {
            "igbp": (("lat", "lon"), igbp),
            "koppen": (("lat", "lon"), koppen),
            "land_fraction": (("lat", "lon"), (igbp != 0).astype(np.float32)),
            "cell_area": (("lat", "lon"), cell_area(lat, lon)),
            "modelled": (("lat", "lon"), (igbp != 0) & (igbp != 15)),
        },
        coords={"lat": lat, "lon": lon},
    )


def random_context(lat, lon, seed: int = 0) -> xr.Dataset:
    """A random grid context (IGBP 0..16, Köppen 1..5 on land, random land fractions)."""
    rng = np.random.default_rng(seed)
    lat, lon = np.asarray(lat), np.asarray(lon)
    shape = (lat.size, lon.size)
    igbp = rng.integers(0, 17, shape)
    return xr.Dataset(
        {
            "land_fraction": (("lat", "lon"), np.where(igbp == 0, 0.0, rng.random(shape)).astype(np.float32)),
            "igbp": (("lat", "lon"), igbp),
            "koppen": (("lat", "lon"), np.where(igbp == 0, 0, rng.integers(1, 6, shape))),
        },
        coords={"lat": lat, "lon": lon},
    )


def random_fluxes(lat, lon, days, seed: int = 0) -> xr.Dataset:
    """(time, lat, lon) GPP, RECO and spreads for ``product.write_product``; two empty rows."""
    rng = np.random.default_rng(seed)
    shape = (len(days), len(lat), len(lon))
    gpp = rng.gamma(2.0, 2.0, shape).astype(np.float32)
    reco = (0.7 * gpp + rng.gamma(2.0, 1.0, shape)).astype(np.float32)
    gpp[:, :2] = np.nan  # e.g. ocean rows
    data = {"GPP": gpp, "RECO": reco, "GPP_sd": 0.1 * reco, "RECO_sd": 0.2 * reco, "NEE_sd": 0.3 * reco}
    return xr.Dataset({k: (("time", "lat", "lon"), v) for k, v in data.items()},
                      coords={"time": days, "lat": lat, "lon": lon})


#: CF attributes of the CMOR land carbon fluxes :func:`cmip_model` writes.
CMOR_FLUXES = {
    "gpp": ("gross_primary_productivity_of_biomass_expressed_as_carbon", "Carbon Mass Flux out of Atmosphere Due to Gross Primary Production on Land"),
    "ra": ("plant_respiration_carbon_flux", "Carbon Mass Flux into Atmosphere Due to Autotrophic (Plant) Respiration on Land"),
    "rh": ("heterotrophic_respiration_carbon_flux", "Total Heterotrophic Respiration on Land as Carbon Mass Flux"),
    "npp": ("net_primary_productivity_of_biomass_expressed_as_carbon", "Net Primary Production on Land as Carbon Mass Flux"),
    "nep": ("surface_net_downward_mass_flux_of_carbon_dioxide_expressed_as_carbon_due_to_all_land_processes_excluding_anthropogenic_land_use_change",
            "Net Carbon Mass Flux out of Atmosphere Due to Net Ecosystem Productivity on Land"),
    "nbp": ("surface_net_downward_mass_flux_of_carbon_dioxide_expressed_as_carbon_due_to_all_land_processes",
            "Carbon Mass Flux out of Atmosphere Due to Net Biospheric Production on Land"),
    "reco": ("", "Ecosystem respiration (Ra + Rh)"),
    "nee": ("", "Net ecosystem exchange (RECO - GPP), positive upward"),
}
#: Share of RECO the test model gives to autotrophic respiration.
RA_SHARE = 0.45


def cmip_model(lat, lon, start="2001-01-01", end="2002-12-31", *, freq: str = "monthly", calendar: str = "noleap",
               variables: Sequence[str] = ("gpp", "ra", "rh", "nep"), units: str = "kg m-2 s-1",
               lon_360: bool = True, lat_descending: bool = False, time_bounds: bool = True,
               source_id: str = "CBGRID-TWIN", seed: int = 0, scale: float = 1.0, truth: xr.Dataset | None = None,
               freq_hours: int = 6) -> xr.Dataset:
    """A CMIP6-style land-carbon output on the ``lat``×``lon`` grid: the twin's true fluxes
    (``scale`` × GPP, RECO) as CMOR variables (ra = 45 % and rh = 55 % of RECO, nep = GPP − RECO,
    npp = GPP − ra), in ``units``, on cftime times of ``calendar`` with ``time_bnds``.

    ``freq``: ``monthly`` (mid-month labels), ``daily`` (noon labels; days the calendar lacks
    are left out) or ``subdaily`` (``freq_hours`` steps, each holding its day's mean). Ocean
    and ice cells are NaN (written as 1e20, as CMIP does). ``truth``: (time, lat, lon) daily
    GPP_true and RECO_true to use instead of simulating the twin.

    >>> ds = cmip_model([45.5, 46.5], [7.5, 8.5, 9.5], "2001-01-01", "2001-03-31")  # doctest: +SKIP
    >>> ds["gpp"].attrs["units"], ds.time.dt.calendar                                  # doctest: +SKIP
    ('kg m-2 s-1', 'noleap')
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    days = pd.date_range(start, end, freq="D")
    if truth is None:
        truth = twin.twin_grid(lat, lon, days, seed=seed)
    daily = (truth[["GPP_true", "RECO_true"]].sel(time=days) * scale).astype(np.float64).compute()
    factor = 1.0 / cunits.conversion_factor(units)
    if freq == "monthly":
        data = daily.resample(time="MS").mean()
        first = data.indexes["time"]
        nxt = first + pd.offsets.MonthBegin(1)
        lo = [cftime.datetime(t.year, t.month, 1, calendar=calendar) for t in first]
        hi = [cftime.datetime(t.year, t.month, 1, calendar=calendar) for t in nxt]
        mid = [a + (b - a) / 2 for a, b in zip(lo, hi)]
    elif freq in ("daily", "subdaily"):
        ok = []
        for i, t in enumerate(days):
            try:
                cftime.datetime(t.year, t.month, t.day, calendar=calendar)
                ok.append(i)
            except ValueError:
                continue
        data = daily.isel(time=ok)
        sel = days[ok]
        step = pd.Timedelta(hours=freq_hours if freq == "subdaily" else 24)
        n = int(pd.Timedelta(days=1) / step)
        base = [cftime.datetime(t.year, t.month, t.day, calendar=calendar) for t in sel]
        lo = [b + i * step.to_pytimedelta() for b in base for i in range(n)]
        hi = [t + step.to_pytimedelta() for t in lo]
        mid = [a + (b - a) / 2 for a, b in zip(lo, hi)]
        if n > 1:
            data = data.isel(time=np.repeat(np.arange(data.sizes["time"]), n))
    else:
        raise ValueError(f"freq must be monthly, daily or subdaily, not {freq!r}")
    gpp = data["GPP_true"].values
    reco = data["RECO_true"].values
    ra = RA_SHARE * reco
    fields = {"gpp": gpp, "ra": ra, "rh": reco - ra, "npp": gpp - ra, "nep": gpp - reco, "nbp": gpp - reco,
              "reco": reco, "nee": reco - gpp}
    out_lon = np.mod(lon, 360.0) if lon_360 else lon
    order_lon = np.argsort(out_lon, kind="stable")
    order_lat = np.argsort(lat)[::-1] if lat_descending else np.argsort(lat)
    ds = xr.Dataset(coords={
        "time": ("time", np.array(mid, dtype=object), {"standard_name": "time", "axis": "T", "bounds": "time_bnds"}),
        "lat": ("lat", lat[order_lat], {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "lon": ("lon", out_lon[order_lon], {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    })
    for v in variables:
        std, long = CMOR_FLUXES[v]
        arr = (fields[v] * factor)[:, order_lat][:, :, order_lon].astype(np.float32)
        attrs = {"units": units, "long_name": long, **({"standard_name": std} if std else {})}
        ds[v] = (("time", "lat", "lon"), arr, attrs)
        ds[v].encoding = {"_FillValue": np.float32(1e20)}
    if time_bounds:
        ds["time_bnds"] = (("time", "bnds"), np.stack([np.array(lo, dtype=object), np.array(hi, dtype=object)], axis=1))
    else:
        del ds["time"].attrs["bounds"]
    ds["time"].encoding = {"units": "days since 1850-01-01", "calendar": calendar}
    if time_bounds:
        ds["time_bnds"].encoding = {"units": "days since 1850-01-01", "calendar": calendar}
    ds.attrs = {"Conventions": "CF-1.7 CMIP-6.2", "source_id": source_id, "experiment_id": "historical",
                "frequency": {"monthly": "mon", "daily": "day", "subdaily": f"{freq_hours}hr"}[freq],
                "comment": "test model: the cbgrid synthetic twin's true fluxes in CMIP6 conventions"}
    return ds


class StubPredictor:
    """A stand-in trained run (``cbgrid.contracts.Predictor``): a light/temperature response.

    ``window`` > 0 makes it temporal: each day's flux uses the mean temperature of the
    ``window`` days ending that day and is NaN until that much history exists. Records the
    first and last day of every Dataset it is asked to predict in ``seen_days``.
    """

    features = ["temperature_2m", "surface_solar_radiation_downwards_sum"]

    def __init__(self, scale: float = 1.0, window: int = 0, spread: float = 0.1, name: str = "stub"):
        self.scale, self.window, self.spread, self.name = scale, window, spread, name
        self.seen_days: list = []

    @property
    def history_days(self) -> int:
        return self.window

    def predict(self, ds: xr.Dataset, *, block_sites: int | None = None, progress: bool = False) -> xr.Dataset:
        self.seen_days.append((ds.indexes["time"][0], ds.indexes["time"][-1]))
        t = ds["temperature_2m"] - 273.15
        if self.window:
            t = t.rolling(time=self.window, min_periods=self.window).mean()
        rad = ds["surface_solar_radiation_downwards_sum"] / 1e6
        gpp = (self.scale * 0.3 * rad * np.exp(-(((t - 20) / 12) ** 2))).clip(0)
        reco = 1.0 + 0.3 * gpp + 0.05 * t.clip(0) + 0.01 * ds["igbp"]
        nee = reco - gpp + 0.05
        pred = xr.concat([gpp, reco, nee], pd.Index(list(TARGETS), name="target"))
        pred = pred.transpose("site", "time", "target").astype(np.float32)
        return xr.Dataset({"prediction": pred, "prediction_std": (self.spread * abs(pred)).astype(np.float32)})


class MemoryWriter:
    """A ``cbgrid.contracts.BlockWriter`` that assembles the blocks into in-memory arrays.

    >>> w = MemoryWriter((2, 3, 4))
    >>> w.write(0, 1, gpp=np.ones((2, 3, 2)), reco=3 * np.ones((2, 3, 2)), gpp_sd=0, reco_sd=0, nee_sd=0)
    >>> float(np.nansum(w.data["NEE"]))
    24.0
    """

    def __init__(self, shape: tuple[int, int, int]):
        self.data = {k: np.full(shape, np.nan, np.float32) for k in (*product.FLUXES, "GPP_sd", "RECO_sd", "NEE_sd")}
        self.attrs: dict = {}

    def write(self, i0: int, j0: int, *, gpp, reco, gpp_sd, reco_sd, nee_sd) -> None:
        gpp, reco = np.asarray(gpp, np.float32), np.asarray(reco, np.float32)
        ny, nx = gpp.shape[1:]
        sl = (slice(None), slice(i0, i0 + ny), slice(j0, j0 + nx))
        for name, arr in (("GPP", gpp), ("RECO", reco), ("NEE", reco - gpp), ("GPP_sd", gpp_sd),
                          ("RECO_sd", reco_sd), ("NEE_sd", nee_sd)):
            self.data[name][sl] = np.broadcast_to(np.asarray(arr, np.float32), gpp.shape)

    def set_attrs(self, attrs: Mapping) -> None:
        self.attrs.update(attrs)


def assert_product_ok(path) -> xr.Dataset:
    """Fail unless ``path`` is a valid cbgrid product (layout, units, fill, NEE = RECO − GPP
    bit for bit); returns it opened with xarray."""
    problems = product.check_product(path)
    assert not problems, f"{path}: {problems}"
    ds = product.open_product(path)
    for name in ("lat", "lon", "time"):
        assert ds[name].attrs.get("standard_name") in (name if name == "time" else {"lat": "latitude", "lon": "longitude"}[name],), name
    return ds


#: Network codes of the published target table and the prefixes its feature tables may carry.
_CB_NETWORKS = ("FLX", "AMF", "ICOS", "JPX")


def carbonbench_folder(path, n_sites: int = 24, start="1999-12-01", end="2002-06-30", seed: int = 0, *,
                       era5: Sequence[str] | None = None, row_group_size: int = 4000, version: int = 2) -> dict:
    """Write a small folder in the published CarbonBench layout, with every trap of its loaders.

    Files: ``target_fluxes_v2.parquet`` (``version=1``: ``target_fluxes.parquet`` with prefixed
    ids and no ``network`` column), ``MOD09GA.parquet``, ``ERA5.parquet`` (columns ``era5``,
    default the minimal set), ``koppen_sites.json``, ``koppen_sites_short.json``,
    ``feature_sets.json`` (the catalog's sets, restricted to the ERA5 columns written).
    Traps: ``-9999`` in targets and QC, rows before 2000-02-24, a site with no Köppen entry
    (``traps["no_koppen"]``), one with a main but no detailed class, one with rows only before
    2000-02-24, rows without IGBP, lat/lon with more than 3 decimals, feature ids with network
    prefixes, duplicated (date, site) feature rows with other values (first in file order
    should win), missing feature days, feature rows of a site that has no targets.
    Returns ``{"path": folder, "traps": {...}}``.

    >>> import tempfile
    >>> out = carbonbench_folder(Path(tempfile.mkdtemp()) / "cb", n_sites=6, end="2000-04-30")
    >>> sorted(p.name for p in out["path"].iterdir())[:3]
    ['ERA5.parquet', 'MOD09GA.parquet', 'feature_sets.json']
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if n_sites < 6:
        raise ValueError("carbonbench_folder needs n_sites >= 6 (one site per trap plus ordinary ones)")
    rng = np.random.default_rng(seed)
    era5 = list(catalog.era5_bands("minimal") if era5 is None else era5)
    days = pd.date_range(start, end, freq="D")
    sites = [f"{'UDFC'[i % 4]}{chr(65 + i % 26)}-S{i:02d}" for i in range(n_sites)]
    igbp_classes = schema.REFERENCE_IGBP
    detailed = {"A": ["Af", "Am", "Aw"], "B": ["BSk", "BWh"], "C": ["Cfa", "Cfb", "Csa"], "D": ["Dfb", "Dfc", "Dwa"],
                "E": ["ET"]}
    koppen = {s: "ABCDE"[i % 5] for i, s in enumerate(sites)}
    short = {s: detailed[k][i % len(detailed[k])] for i, (s, k) in enumerate(koppen.items())}
    traps = {"no_koppen": sites[0], "no_detailed": sites[1], "only_early": sites[2]}
    del koppen[sites[0]], short[sites[0]], short[sites[1]]
    igbp = {s: igbp_classes[(3 * i) % len(igbp_classes)] for i, s in enumerate(sites)}
    lat = {s: float(rng.uniform(-40, 65)) + 0.000123 for s in sites}
    lon = {s: float(rng.uniform(-150, 150)) - 0.000456 for s in sites}
    network = {s: _CB_NETWORKS[i % 4] for i, s in enumerate(sites)}

    doy = days.day_of_year.to_numpy()
    rows = []
    for s in sites:
        d = days[(days < "2000-02-01")] if s == traps["only_early"] else days[rng.integers(0, 40):]
        n = len(d)
        season = np.sin(2 * np.pi * (doy[-n:] - 100) / 365.25) * np.sign(lat[s])
        gpp = np.clip(4 + 4 * season + rng.normal(0, 1, n), 0, None)
        reco = 2 + 0.5 * gpp + rng.normal(0, 0.5, n)
        qc = np.where(rng.random(n) < 0.7, 1.0, rng.random(n).round(3))
        df = pd.DataFrame({"TIMESTAMP": d.strftime("%Y%m%d").astype(int), "site": s, "lat": lat[s], "lon": lon[s],
                           "IGBP": igbp[s], GPP: gpp, RECO: reco, NEE: reco - gpp, QC: qc, "network": network[s]})
        rows.append(df)
    tgt = pd.concat(rows, ignore_index=True)
    for c in (GPP, RECO, NEE, QC):
        tgt.loc[rng.random(len(tgt)) < 0.03, c] = -9999.0
    tgt["IGBP"] = tgt["IGBP"].astype(object)
    tgt.loc[rng.random(len(tgt)) < 0.005, "IGBP"] = None
    traps["rows_without_igbp"] = int(tgt["IGBP"].isna().sum())
    if version == 1:
        tgt["site"] = tgt["network"] + "_" + tgt["site"]
        tgt = tgt.drop(columns="network")
        pq.write_table(pa.Table.from_pandas(tgt, preserve_index=False), path / "target_fluxes.parquet")
    else:
        pq.write_table(pa.Table.from_pandas(tgt, preserve_index=False), path / "target_fluxes_v2.parquet")

    def features(columns, kind):
        parts = []
        for i, s in enumerate([*sites, "ZZ-Non"]):
            keep = rng.random(len(days)) > 0.05
            d = days[keep]
            t = np.sin(2 * np.pi * (d.day_of_year.to_numpy() - 100) / 365.25)
            data = {}
            for j, c in enumerate(columns):
                if c == "temperature_2m":
                    data[c] = 283 + 12 * t + rng.normal(0, 2, d.size)
                elif kind == "modis" and c.startswith("sur_refl"):
                    data[c] = np.clip(0.1 + 0.05 * t + rng.normal(0, 0.02, d.size), 0, 1)
                elif kind == "modis" and c == "clouds":
                    data[c] = rng.random(d.size)
                elif kind == "modis":
                    data[c] = rng.uniform(0, 90, d.size)
                else:
                    data[c] = (j + 1) * (1 + 0.5 * t) + rng.normal(0, 0.1, d.size)
            prefix = "" if i % 3 == 0 else f"{network.get(s, 'FLX')}_"
            parts.append(pd.DataFrame({"date": d.strftime("%Y-%m-%d"), "site": prefix + s, **data}))
        df = pd.concat(parts, ignore_index=True)
        dup = df.sample(frac=0.02, random_state=seed)
        changed = dup.copy()
        changed[columns] = changed[columns] + 1000.0
        changed["site"] = [x.split("_")[-1] for x in changed["site"]]  # the same site, spelt without prefix
        df = pd.concat([df, changed], ignore_index=True)  # repeats come later: the first row must win
        order = rng.permutation(len(df))  # rows out of site order, repeats spread over row groups
        df = df.iloc[np.sort(order[: len(df)])] if kind == "modis" else df.iloc[order]
        return df.reset_index(drop=True), len(dup)

    modis, traps["modis_duplicates"] = features(catalog.modis_bands(), "modis")
    era, traps["era5_duplicates"] = features(era5, "era5")
    pq.write_table(pa.Table.from_pandas(modis, preserve_index=False), path / "MOD09GA.parquet", row_group_size=row_group_size)
    pq.write_table(pa.Table.from_pandas(era, preserve_index=False), path / "ERA5.parquet", row_group_size=row_group_size)
    (path / "koppen_sites.json").write_text(json.dumps(koppen))
    (path / "koppen_sites_short.json").write_text(json.dumps(short))
    sets = {name: [c for c in catalog.era5_bands(name) if c in era5] for name in catalog.FEATURE_SETS}
    (path / "feature_sets.json").write_text(json.dumps(sets))
    return {"path": path, "traps": traps, "sites": sites}
