import numpy as np
import pandas as pd
import pytest

from cbgrid import schema
from cbgrid.errors import InputError
from cbgrid.schema import SchemaError
from cbgrid.sources import fluxnet


def test_reads_real_fluxnet2015_file(oneflux_file):
    ds = fluxnet.read_oneflux(oneflux_file)
    schema.validate(ds)
    assert ds.site.values.tolist() == ["US-AR1"]
    assert schema.class_names(ds, "igbp").tolist() == ["GRA"]
    assert schema.class_names(ds, "network").tolist() == ["FLUXNET2015"]
    assert ds.sizes["time"] == 1461
    raw = pd.read_csv(oneflux_file)
    for store_name, col in [(schema.GPP, "GPP_NT_VUT_50"), (schema.RECO, "RECO_NT_VUT_50"),
                            (schema.NEE, "NEE_VUT_50"), (schema.QC, "NEE_VUT_50_QC")]:
        expect = raw[col].where(raw[col] != -9999).to_numpy(np.float32)
        np.testing.assert_array_equal(ds[store_name].values[0], expect)
    assert float(ds[schema.GPP].isel(site=0).sel(time="2009-01-01")) == pytest.approx(-0.052545)
    assert float(ds[schema.QC].mean()) == pytest.approx(raw["NEE_VUT_50_QC"].mean(), rel=1e-6)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


HEADER = "TIMESTAMP,GPP_NT_VUT_USTAR50,RECO_NT_VUT_USTAR50,NEE_VUT_USTAR50,NEE_VUT_USTAR50_QC\n"
NAME = "AMF_US-AR1_FLUXNET_SUBSET_DD_2009-2009_3-5.csv"


def test_new_generation_columns_and_missing_values(tmp_path):
    p = _write(tmp_path, NAME, HEADER + "20090101,1.5,2.0,0.5,1\n20090103,-9999,-9999,-9999,0.25\n")
    ds = fluxnet.read_oneflux(p)
    assert ds.sizes["time"] == 3  # the missing 2 January is a NaN day
    assert np.isnan(ds[schema.GPP].values[0, 1:]).all()
    assert ds[schema.QC].values[0].tolist()[::2] == [1.0, 0.25]
    assert schema.class_names(ds, "network").tolist() == ["AmeriFlux"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        (NAME, "DATE,GPP_NT_VUT_50\n20090101,1\n", "no TIMESTAMP column"),
        (NAME, HEADER + "2009-01-01,1,1,0,1\n", "row 2: TIMESTAMP '2009-01-01' is malformed"),
        (NAME, HEADER + "20091301,1,1,0,1\n", "row 2: cannot parse TIMESTAMP '20091301'"),
        (NAME, HEADER + "200901010000,1,1,0,1\n", "is sub-daily"),
        (NAME, HEADER + "20090101,1,1,0,1\n20090101,1,1,0,1\n", "duplicate day"),
        (NAME, "TIMESTAMP,GPP_NT_VUT_50\n20090101,1\n", "RECO_NT_VUT_USTAR50"),
        (NAME, HEADER + "20090101,abc,1,0,1\n", "row 2: GPP_NT_VUT_USTAR50 = 'abc' is not a number"),
        (NAME, HEADER + "20090101,1,1,0,48\n", "NEE_VUT_USTAR50_QC = 48 outside the plausible range \\[0, 1\\]"),
        ("AMF_XX-Nop_FLUXNET_SUBSET_DD_2009-2009_3-5.csv", HEADER + "20090101,1,1,0,1\n", "'XX-Nop' is not in the site catalog"),
        ("AMF_US-AR1_FLUXNET_SUBSET_HH_2009-2009_3-5.csv", HEADER, "this is a HH file"),
        ("mydata.csv", HEADER, "cannot read a site id"),
    ],
)
def test_bad_files_are_named(tmp_path, name, text, message):
    with pytest.raises(InputError, match=message):
        fluxnet.read_oneflux(_write(tmp_path, name, text))


def test_site_outside_catalog_with_user_table(tmp_path):
    p = _write(tmp_path, "ICOSETC_XX-New_FLUXNET_DD_L2.csv", HEADER + "20200101,1,1,0,1\n")
    sites = pd.DataFrame({"site": ["XX-New"], "lat": [50.0], "lon": [10.0], "igbp": ["ENF"], "koppen": [""]})
    ds = fluxnet.read_oneflux(p, sites=sites)
    assert schema.class_names(ds, "koppen").tolist() == ["D"]  # looked up in the Beck raster
    assert schema.class_names(ds, "network").tolist() == ["ICOS"]
    bad = sites.assign(igbp="FOREST")
    with pytest.raises(SchemaError, match="unknown igbp class 'FOREST'"):
        fluxnet.read_oneflux(p, sites=bad)


def _release(tmp_path, name, days, gpp, qc=1.0):
    """A DD file: GPP as given, RECO = GPP + 1, NEE = 1, QC; a -9999 GPP makes the whole day -9999."""
    rows = [(g, g + 1, 1.0, qc) if g != -9999 else (-9999,) * 4 for g in gpp]
    lines = [f"{d:%Y%m%d}," + ",".join(map(str, r)) for d, r in zip(days, rows)]
    return _write(tmp_path, name, HEADER + "\n".join(lines) + "\n")


def _two_releases(tmp_path):
    d1 = pd.date_range("2009-01-01", "2009-01-10")
    d2 = pd.date_range("2009-01-06", "2009-01-15")
    g1 = [1.0] * 10
    g1[7] = -9999  # FLUXNET2015 covers 8 January but has no value: the day still comes from it
    flx = _release(tmp_path, "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2009_1-3.csv", d1, g1)
    amf = _release(tmp_path, "AMF_US-AR1_FLUXNET_SUBSET_DD_2009-2009_3-5.csv", d2, [2.0] * 10)
    return flx, amf


def test_one_site_from_several_releases_day_by_day(tmp_path):
    flx, amf = _two_releases(tmp_path)
    ds = fluxnet.read_many([amf, flx])
    assert ds.sizes == {"site": 1, "time": 15}
    gpp = ds[schema.GPP].values[0]
    np.testing.assert_array_equal(gpp[:7], 1.0)
    assert np.isnan(gpp[7]) and np.isnan(ds[schema.RECO].values[0, 7])
    np.testing.assert_array_equal(gpp[8:10], 1.0)
    np.testing.assert_array_equal(gpp[10:], 2.0)
    assert ds.attrs["releases"] == "FLUXNET2015: 10 days; AmeriFlux: 5 days"
    assert schema.class_names(ds, "network").tolist() == ["FLUXNET2015"]
    with pytest.raises(SchemaError, match="several files of the same release"):
        fluxnet.read_many([flx, _release(tmp_path, "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2010-2010_1-3.csv",
                                         pd.date_range("2010-01-01", periods=3), [1.0] * 3)])


def test_a_later_ingest_of_another_release_combines_instead_of_skipping(tmp_path):
    from cbgrid import store
    from cbgrid.cli import main

    flx, amf = _two_releases(tmp_path)
    one = tmp_path / "one.zarr"
    two = tmp_path / "two.zarr"
    period = ["--start", "2009-01-01", "--end", "2009-01-31"]
    assert main(["-q", "ingest", str(flx), str(amf), "--out", str(one), *period]) == 0
    assert main(["-q", "ingest", str(amf), "--out", str(two), *period]) == 0
    assert main(["-q", "ingest", str(flx), "--out", str(two), *period]) == 0  # the higher-priority release later
    a, b = store.open_store(one).load(), store.open_store(two).load()
    for v in (schema.GPP, schema.RECO, schema.NEE, schema.QC):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert float(a[schema.GPP].sel(time="2009-01-12").item()) == 2.0
