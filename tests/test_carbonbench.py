"""Import of the published CarbonBench layout, against an independent pandas restatement of the
reference loaders (load_targets, load_modis, load_era, join_features), and its bad inputs."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cbgrid import catalog, schema, sources, store, testing
from cbgrid.cli import main
from cbgrid.errors import DataError, InputError, MissingError
from cbgrid.schema import GPP, NEE, QC, RECO
from cbgrid.sources import carbonbench as cb

TARGETS = [GPP, RECO, NEE]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return testing.carbonbench_folder(tmp_path_factory.mktemp("cb") / "data", n_sites=24)


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "cb.zarr"
    # a tiny budget and small batches: one pass per ERA5 column, repeats across batches
    report = cb.write_folder(folder["path"], out, progress=False, budget_mb=0.05, batch_rows=1000)
    return store.open_store(out).load(), report


def reference_rows(d):
    """load_targets() + load_modis() + load_era('full') + the left joins, restated in pandas."""
    df = pd.read_parquet(d / "target_fluxes_v2.parquet")
    df = df.replace(-9999, np.nan)
    df.TIMESTAMP = pd.to_datetime(df.TIMESTAMP, format="%Y%m%d")
    df = df.rename(columns={"TIMESTAMP": "date"})
    df = df[df.date >= pd.to_datetime("2000-02-24")]
    df.lat, df.lon = np.round(df.lat.values, 3), np.round(df.lon.values, 3)
    df["Koppen"] = df["site"].map(json.loads((d / "koppen_sites.json").read_text()))
    df["Koppen_short"] = df["site"].map(json.loads((d / "koppen_sites_short.json").read_text()))
    df = df[["date", "site", "lat", "lon", "IGBP", "Koppen", "Koppen_short", *TARGETS, QC]].dropna()

    def feats(name, cols=None):
        f = pd.read_parquet(d / name, columns=cols)
        f.date = pd.to_datetime(f.date)
        f.site = [x.split("_")[1] if len(x.split("_")) > 1 else x for x in f.site.values]
        return f.loc[f[["date", "site"]].drop_duplicates().index]

    sets = json.loads((d / "feature_sets.json").read_text())
    era = feats("ERA5.parquet", ["date", "site"] + sets["full"])
    joined = df.merge(feats("MOD09GA.parquet"), how="left", on=["date", "site"]).merge(era, how="left", on=["date", "site"])
    return df, joined


def test_every_kept_row_and_value_is_the_reference_loaders(folder, imported):
    ds, report = imported
    rows, joined = reference_rows(folder["path"])
    assert sorted(ds.site.values.tolist()) == sorted(rows.site.unique()) == ds.site.values.tolist()
    assert report["rows_kept"] == len(rows)
    s = pd.Index(ds.site.values).get_indexer(joined.site)
    t = ds.indexes["time"].get_indexer(joined.date)
    assert (s >= 0).all() and (t >= 0).all()
    for v in [*TARGETS, QC, *catalog.modis_bands(), *catalog.era5_bands("minimal")]:
        got = ds[v].values[s, t]
        np.testing.assert_array_equal(got, joined[v].to_numpy(np.float32), err_msg=v)
    # target days the reference drops hold no usable target
    usable = np.isfinite(ds[GPP].values) | np.isfinite(ds[RECO].values) | np.isfinite(ds[NEE].values) | np.isfinite(ds[QC].values)
    assert int(usable.sum()) == len(rows)
    assert ds.indexes["time"][usable.any(axis=0)].min() >= pd.Timestamp("2000-02-24")


def test_site_coordinates_follow_the_reference(folder, imported):
    ds, _ = imported
    rows, _ = reference_rows(folder["path"])
    first = rows.groupby("site").agg({"Koppen": "first", "IGBP": "first", "lat": "first", "lon": "first",
                                      "Koppen_short": "first"})
    assert schema.class_names(ds, "igbp").tolist() == first.IGBP.tolist()
    assert schema.class_names(ds, "koppen").tolist() == first.Koppen.tolist()
    assert schema.class_names(ds, "koppen_detailed").tolist() == first.Koppen_short.tolist()
    np.testing.assert_array_equal(ds.lat.values, first.lat.to_numpy())
    np.testing.assert_array_equal(ds.lon.values, np.round(first.lon.to_numpy(), 3))
    assert set(schema.class_names(ds, "network")) <= {"FLUXNET2015", "AmeriFlux", "ICOS", "JapanFlux"}


def test_traps_are_present_and_handled(folder, imported):
    ds, report = imported
    traps = folder["traps"]
    assert report["dropped_no_koppen"] == sorted([traps["no_koppen"], traps["no_detailed"]])
    assert report["dropped_no_rows"] == [traps["only_early"]]
    assert "ZZ-Non" not in ds.site.values
    raw = pd.read_parquet(folder["path"] / "ERA5.parquet")
    assert raw.site.str.contains("_").any() and traps["era5_duplicates"] > 0
    assert (pd.read_parquet(folder["path"] / "target_fluxes_v2.parquet")[GPP] == -9999).any()
    # the MODIS repeats come after their first rows and carry values + 1000: the first row wins
    assert float(ds["sur_refl_b01"].max()) <= 1 and float(ds["SolarZenith"].max()) <= 90


def test_dropped_sites_are_named_in_the_log(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cbgrid"):
        cb.write_folder(folder["path"], tmp_path / "s.zarr", progress=False)
    text = caplog.text
    assert "2 site(s) dropped: no entry in koppen_sites.json" in text
    assert folder["traps"]["no_koppen"] in text and folder["traps"]["only_early"] in text


def test_the_earlier_prefixed_target_table_gives_the_same_store(tmp_path, imported):
    v1 = testing.carbonbench_folder(tmp_path / "v1", n_sites=24, version=1)
    ds = cb.read_folder(v1["path"], progress=False)
    small = cb.CarbonBenchImport(v1["path"], progress=False, batch_rows=700)  # v1 repeats across batches
    np.testing.assert_array_equal(small.targets()[GPP], imported[0][GPP].values)
    assert ds.site.values.tolist() == imported[0].site.values.tolist()
    np.testing.assert_array_equal(ds[GPP].values, imported[0][GPP].values)


def test_cli_ingest_recognises_the_folder(folder, tmp_path, capsys):
    assert sources.site_source_for([folder["path"]]).name == "carbonbench"
    assert main(["-q", "ingest", str(folder["path"]), "--out", str(tmp_path / "s.zarr")]) == 0
    assert "sites      21" in capsys.readouterr().out
    # a second import into the existing store adds nothing and loses nothing
    before = store.open_store(tmp_path / "s.zarr")[GPP].values
    assert main(["-q", "ingest", str(folder["path"]), "--out", str(tmp_path / "s.zarr")]) == 0
    np.testing.assert_array_equal(store.open_store(tmp_path / "s.zarr")[GPP].values, before)


def _copy(folder, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(folder["path"], d)
    return d


def test_missing_files_are_named(folder, tmp_path):
    d = _copy(folder, tmp_path)
    (d / "ERA5.parquet").unlink()
    (d / "koppen_sites.json").unlink()
    with pytest.raises(MissingError, match=r"missing ERA5.parquet, koppen_sites.json"):
        cb.layout(d)


def test_a_target_table_without_a_required_column(folder, tmp_path):
    d = _copy(folder, tmp_path)
    t = pq.read_table(d / "target_fluxes_v2.parquet").drop([QC])
    pq.write_table(t, d / "target_fluxes_v2.parquet")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['NEE_VUT_USTAR50_QC'\]"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)


def test_feature_ids_matching_no_target_site(folder, tmp_path):
    d = _copy(folder, tmp_path)
    m = pd.read_parquet(d / "MOD09GA.parquet")
    m["site"] = "XX_" + m["site"].str.replace("_", "") + "Q"
    m.to_parquet(d / "MOD09GA.parquet", index=False)
    with pytest.raises(InputError, match=r"MOD09GA.parquet: none of its site ids"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_a_feature_set_naming_columns_the_era5_table_lacks(folder, tmp_path):
    d = _copy(folder, tmp_path)
    sets = json.loads((d / "feature_sets.json").read_text())
    sets["full"] = sets["full"] + ["snow_cover", "runoff_sum"]
    (d / "feature_sets.json").write_text(json.dumps(sets))
    with pytest.raises(InputError, match=r"the ERA5 table lacks: snow_cover, runoff_sum"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)


@pytest.mark.parametrize("table", ["target_fluxes_v2.parquet", "MOD09GA.parquet", "ERA5.parquet"])
def test_a_parquet_file_cut_short_is_named(folder, tmp_path, table):
    d = _copy(folder, tmp_path)
    data = (d / table).read_bytes()
    (d / table).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{table}: not a readable Parquet file .*download it again"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_a_damaged_page_is_named(folder, tmp_path):
    """The footer reads, a column's pages do not: the error comes while streaming, still one DataError."""
    d = _copy(folder, tmp_path)
    f = d / "target_fluxes_v2.parquet"
    md = pq.ParquetFile(f).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    col = md.row_group(0).column(names.index(GPP))
    data = bytearray(f.read_bytes())
    data[col.data_page_offset: col.data_page_offset + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"target_fluxes_v2.parquet: not a readable Parquet file"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)


def test_a_feature_date_that_does_not_parse_is_named(folder, tmp_path):
    d = _copy(folder, tmp_path)
    m = pd.read_parquet(d / "ERA5.parquet")
    m.loc[m.index[5], "date"] = "2015-02-30"
    m.to_parquet(d / "ERA5.parquet", index=False)
    with pytest.raises(DataError, match=r"ERA5.parquet: column date cannot be read as dates"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)


def _kept_target_row(d, imported) -> tuple[pd.DataFrame, int]:
    """The target table and the index of a row the import keeps (all targets, QC and IGBP there)."""
    t = pd.read_parquet(d / "target_fluxes_v2.parquet")
    ds, _ = imported
    ok = t["site"].isin(ds["site"].values.astype(str)) & (t["TIMESTAMP"] > 20010101) & t["IGBP"].notna()
    ok &= (t[[GPP, RECO, NEE, QC]] != -9999).all(axis=1)
    return t, int(t.index[ok][0])


def test_implausible_values_are_kept_as_the_reference_keeps_them_and_counted(folder, imported, tmp_path, caplog):
    d = _copy(folder, tmp_path)
    t, i = _kept_target_row(d, imported)
    t.loc[i, GPP], t.loc[i, QC] = 1e30, 55.0
    t.to_parquet(d / "target_fluxes_v2.parquet", index=False)
    with caplog.at_level(logging.WARNING, logger="cbgrid.sources.carbonbench"):
        cb.write_folder(d, tmp_path / "s.zarr", progress=False)
    ds = store.open_store(tmp_path / "s.zarr")
    day = pd.to_datetime(str(t.loc[i, "TIMESTAMP"]), format="%Y%m%d")
    at = ds.sel(site=t.loc[i, "site"], time=day)
    assert float(at[GPP]) == np.float32(1e30) and float(at[QC]) == 55.0  # the reference's row, as published
    for name in (GPP, QC):
        assert re.search(rf"target_fluxes_v2.parquet: 1 value\(s\) of {name} outside its plausible range", caplog.text)
    # the fixture's ERA5 repeats carry +1000 and the first in file order wins, as in the reference
    assert re.search(r"ERA5.parquet: \d+ value\(s\) of temperature_2m outside its plausible range \[150, 350\]",
                     caplog.text)


def test_an_infinite_target_drops_its_row_with_a_warning(folder, imported, tmp_path, caplog):
    d = _copy(folder, tmp_path)
    t, i = _kept_target_row(d, imported)
    t.loc[i, RECO] = np.inf
    t.to_parquet(d / "target_fluxes_v2.parquet", index=False)
    with caplog.at_level(logging.WARNING, logger="cbgrid.sources.carbonbench"):
        report = cb.write_folder(d, tmp_path / "s.zarr", progress=False)
    assert "1 row(s) with an infinite target or QC dropped" in caplog.text
    assert report["rows_kept"] == imported[1]["rows_kept"] - 1


def test_an_interrupted_import_leaves_the_old_store_intact(folder, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    old = testing.site_store(n_sites=3, days=20)
    store.write_store(old, out, progress=False)

    def boom(self, columns):
        raise KeyboardInterrupt

    monkeypatch.setattr(cb.FeatureTable, "scatter", boom)
    for overwrite in (True, False):
        with pytest.raises(KeyboardInterrupt):
            cb.write_folder(folder["path"], out, overwrite=overwrite, progress=False)
        back = store.open_store(out)
        assert back.site.values.tolist() == old.site.values.tolist()
        np.testing.assert_array_equal(back[GPP].values, old[GPP].values)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.")) in ([], [".s.zarr.lock"])


def test_reference_split_of_the_imported_store_is_split_targets_on_the_raw_tables(folder, imported, tmp_path, capsys):
    from sklearn.model_selection import train_test_split

    from cbgrid import splits

    rows, _ = reference_rows(folder["path"])
    site_meta = rows.groupby("site").agg({"Koppen": "first", "IGBP": "first"}).reset_index()
    _, want = train_test_split(site_meta.site, test_size=0.2, stratify=site_meta.Koppen, random_state=56)
    ds, _ = imported
    got = splits.make_split(ds, by="koppen", method="reference")
    assert sorted(splits.test_sites(got)) == sorted(want)
    path = tmp_path / "s.zarr"
    store.write_store(ds, path, progress=False)
    assert main(["-q", "split", str(path), "--by", "koppen", "--method", "reference"]) == 0
    written = splits.read_split(tmp_path / "splits" / "koppen-reference.csv")
    assert sorted(splits.test_sites(written)) == sorted(want)
    assert "split written to" in capsys.readouterr().out


@pytest.mark.usefixtures("torch_one_thread")
def test_import_split_train_reference_protocol_and_report(tmp_path, capsys):
    """The whole path on a tiny published-layout folder: ingest → reference split → reference
    protocol XGBoost and CT-LSTM → report."""
    d = testing.carbonbench_folder(tmp_path / "data", n_sites=28, start="2000-01-01", end="2000-12-31", seed=4)
    st = tmp_path / "cb.zarr"
    assert main(["-q", "ingest", str(d["path"]), "--out", str(st)]) == 0
    assert main(["-q", "split", str(st), "--by", "koppen", "--method", "reference"]) == 0
    split = tmp_path / "splits" / "koppen-reference.csv"
    common = ["--store", str(st), "--split", str(split), "--protocol", "reference", "--seeds", "1", "--device", "cpu"]
    assert main(["-q", "train", *common, "--model", "xgboost", "--patience", "2", "--out", str(tmp_path / "xgb")]) == 0
    assert main(["-q", "train", *common, "--model", "ctlstm", "--max-epochs", "2", "--hidden", "8",
                 "--out", str(tmp_path / "ctlstm")]) == 0
    for run in ("xgb", "ctlstm"):
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        assert cfg["train"]["protocol"] == "reference"
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "xgb"), str(tmp_path / "ctlstm"), "--out", str(tmp_path / "report"),
                 "--no-plots"]) == 0
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert {"xgboost", "ctlstm"} <= set(summary["model"])
    assert set(summary["protocol"]) == {"reference"}


def test_a_protocol_that_does_not_exist_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--store", str(tmp_path / "s.zarr"), "--model", "xgboost", "--protocol", "paper",
              "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'paper'" in err and "reference" in err
    assert not (tmp_path / "r").exists()
