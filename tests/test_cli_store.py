"""The store commands through the real CLI entry point."""

import pandas as pd
import pytest

from cbgrid import schema, store
from cbgrid.cli import main


def test_ingest_info_split(tmp_path, oneflux_file, capsys):
    out = tmp_path / "flux.zarr"
    assert main(["-q", "ingest", str(oneflux_file), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sites      1" in text and "1461 site-days with GPP" in text and "==1: 786" in text
    ds = store.open_store(out)
    assert str(ds.indexes["time"][0].date()) == "2000-02-24"
    assert main(["-q", "info", str(out)]) == 0
    assert "GRA 1" in capsys.readouterr().out


def test_ingest_adds_a_site_to_an_existing_store(tmp_path, oneflux_file):
    other = tmp_path / "AMF_US-Ha1_FLUXNET_SUBSET_DD_2010-2010_3-5.csv"
    other.write_text(
        "TIMESTAMP,GPP_NT_VUT_USTAR50,RECO_NT_VUT_USTAR50,NEE_VUT_USTAR50,NEE_VUT_USTAR50_QC\n"
        "20100601,9.5,6.0,-3.5,1\n20100602,8.0,5.5,-2.5,0.9\n"
    )
    out = tmp_path / "flux.zarr"
    assert main(["-q", "ingest", str(oneflux_file), "--out", str(out)]) == 0
    assert main(["-q", "ingest", str(other), "--out", str(out)]) == 0
    ds = store.open_store(out)
    assert ds.site.values.tolist() == ["US-AR1", "US-Ha1"]
    assert float(ds[schema.NEE].sel(site="US-Ha1", time="2010-06-01")) == pytest.approx(-3.5)
    assert float(ds[schema.NEE].sel(site="US-AR1", time="2009-01-01")) == pytest.approx(2.09217, rel=1e-6)  # NEE_VUT_50


def test_bad_file_fails_cleanly_and_store_is_untouched(tmp_path, oneflux_file, capsys):
    out = tmp_path / "flux.zarr"
    assert main(["-q", "ingest", str(oneflux_file), "--out", str(out)]) == 0
    bad = tmp_path / "AMF_US-Ha1_FLUXNET_SUBSET_DD_2010-2010_3-5.csv"
    bad.write_text("TIMESTAMP,GPP_NT_VUT_USTAR50\n20100601,1\n20100601,1\n")
    assert main(["-q", "ingest", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "duplicate day" in err and "Traceback" not in err
    assert store.open_store(out).site.values.tolist() == ["US-AR1"]


def test_split_command_writes_stable_csv(tmp_path, small_ds, capsys):
    p = store.write_store(small_ds, tmp_path / "s.zarr", progress=False)
    csv = tmp_path / "k.csv"
    assert main(["-q", "split", str(p), "--by", "koppen", "--seed", "2", "--out", str(csv)]) == 0
    df = pd.read_csv(csv)
    assert list(df.columns) == ["site", "split", "seed", "set", "fold", "igbp", "koppen"]
    assert set(df["set"]) <= {"train", "test"} and len(df) == 6
    assert "Total" in capsys.readouterr().out


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["-q", "info", str(tmp_path / "nope.zarr")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_twin_command_builds_a_valid_store(tmp_path, capsys):
    out = tmp_path / "twin.zarr"
    argv = ["-q", "twin", "--out", str(out), "--sites", "8", "--start", "2019-01-01", "--end", "2019-03-31", "--seed", "4"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "sites      8" in text and "2019-01-01 .. 2019-03-31 (90 days)" in text
    ds = store.open_store(out)  # validates
    assert set(schema.TARGETS) <= set(ds.data_vars) and "temperature_2m" in ds
    assert ds.attrs["twin_seed"] == 4
    # Refuses to replace without --overwrite, and the existing store survives.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert store.open_store(out).sizes["site"] == 8
