"""The bad-input and fault catalogue: every case ends in a clear error or a correct result.

Each case runs one ``cbgrid`` command (in-process for the cheap ones, as real processes for
concurrency and signals) in a fresh copy of a small world: a twin store, its split, a trained
network run and its report. A case states its expected outcome:

* ``error``: non-zero exit, exactly one line ``cbgrid COMMAND: error: ...`` matching the
  case's pattern (naming the file, field or value), no traceback;
* ``ok``: exit 0 and the case's own check of the result.

Either way, nothing written before is lost or changed unless the case says what changes.
The counts per outcome are printed by ``python tests/test_faults.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cbgrid import catalog, manifest, schema
from cbgrid.cli import main
from cbgrid.store import open_store

SITE = "US-AR1"  # in the site catalog, not among the twin's first sites
HEADER = "TIMESTAMP,GPP_NT_VUT_USTAR50,RECO_NT_VUT_USTAR50,NEE_VUT_USTAR50,NEE_VUT_USTAR50_QC\n"
NAME = f"AMF_{SITE}_FLUXNET_SUBSET_DD_2015-2015_3-5.csv"
OLD_HEADER = "TIMESTAMP,GPP_NT_VUT_50,RECO_NT_VUT_50,NEE_VUT_50,NEE_VUT_50_QC\n"


def rows(n: int = 10, start: int = 1, gpp: str = "2.5", reco: str = "2.0", nee: str = "-0.5", qc: str = "1") -> str:
    return "".join(f"201501{d:02d},{gpp},{reco},{nee},{qc}\n" for d in range(start, start + n))


GOOD = HEADER + rows()


# ------------------------------------------------------------------------------------------
# the world each case starts from
@dataclass
class World:
    root: Path
    env: pytest.MonkeyPatch | None = None

    def __getattr__(self, name):  # world.store, world.run, ... are paths under root
        return self.root / {"store": "s.zarr", "split": "split.csv", "run": "run", "report": "report",
                            "products": "products"}[name]

    def file(self, name: str, text: str | bytes) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def recipe(self, name: str = "r.yaml", **changes) -> Path:
        doc = {"name": "faults", "drivers": {"source": "twin", "seed": 0}, "grid": {"resolution": 10.0},
               "period": {"start": "2016-07-01", "end": "2016-07-02", "per": "month"},
               "runs": [str(self.run)], "output": str(self.products), "chunks": {"lat": 9, "lon": 18}}
        for key, value in changes.items():
            if value is _DROP:
                doc.pop(key)
            elif isinstance(value, dict) and isinstance(doc.get(key), dict) and not value.pop("_replace", False):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        import yaml

        return self.file(name, yaml.safe_dump(doc))


_DROP = object()


def _build(base: Path) -> None:
    def run(*argv):
        assert main(["-q", *map(str, argv)]) == 0, argv

    run("twin", "--out", base / "s.zarr", "--sites", 12, "--start", "2015-01-01", "--end", "2016-12-31")
    run("split", base / "s.zarr", "--by", "koppen", "--out", base / "split.csv")
    run("train", "--store", base / "s.zarr", "--split", base / "split.csv", "--model", "lstm", "--seeds", 1,
        "--max-epochs", 1, "--hidden", 8, "--layers", 1, "--threads", 1, "--out", base / "run")
    run("evaluate", base / "run", "--out", base / "report", "--no-plots")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("world")
    _build(base)
    return base


@pytest.fixture
def world(pristine, tmp_path, monkeypatch):
    root = tmp_path / "w"
    shutil.copytree(pristine, root, symlinks=True)
    # the run and report name the store by absolute path: point them at this copy
    for cfg in [root / "run" / "config.json"]:
        cfg.write_text(cfg.read_text().replace(str(pristine), str(root)))
    monkeypatch.chdir(root)
    return World(root, monkeypatch)


def snapshot(root: Path) -> dict[str, str]:
    """Content hash of every file under the world (locks and the manifest's timestamps aside)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------
# the cases
@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World], list]
    expect: str | None  # the error's pattern; None: a correct result
    check: Callable[[World], None] | None = None
    changes: tuple[str, ...] = ()  # path prefixes (relative to the world) the case may change
    slow: bool = False

    @property
    def outcome(self) -> str:
        return "error" if self.expect is not None else "ok"


CASES: list[Case] = []


def case(id, argv, expect=None, check=None, changes=(), slow=False):
    CASES.append(Case(id, argv, expect, check, tuple(changes), slow))


def ingest(text: str | bytes, name: str = NAME, *extra):
    return lambda w: ["ingest", w.file(f"in/{name}", text), *extra]


def store_sites(w: World) -> list[str]:
    from cbgrid.store import open_store

    return [str(s) for s in open_store(w.store)[schema.SITE].values]


# --- ONEFlux files: each fault into a new store and into the existing one ------------------
READER_FAULTS = [
    ("empty-file", b"", NAME, "the file is empty"),
    ("header-only", HEADER, NAME, "header but no rows"),
    ("no-header", b"\n", NAME, "holds no header|no TIMESTAMP column"),
    ("cut-mid-line", GOOD + "20150111,2.5,2.", NAME, "row 12: the file ends inside a line"),
    ("cut-inside-number", HEADER + rows(3) + "20150104,0.2", NAME, "ends inside a line"),
    ("cut-after-stamp", HEADER + rows(3) + "2015010", NAME, "ends inside a line"),
    ("inf-value", HEADER + rows(2) + "20150103,inf,2,0,1\n", NAME, "row 4: GPP_NT_VUT_USTAR50 = inf is not a finite number"),
    ("minus-inf", HEADER + rows(2) + "20150103,2,-inf,0,1\n", NAME, "RECO_NT_VUT_USTAR50 = -inf is not a finite"),
    ("fill-1e30", HEADER + rows(2) + "20150103,1e30,2,0,1\n", NAME, "= 1e\\+30 outside the plausible range"),
    ("fill-minus-1e30", HEADER + rows(2) + "20150103,2,2,-1e30,1\n", NAME, "NEE_VUT_USTAR50 = -1e\\+30 outside"),
    ("gpp-umol-scaled", HEADER + rows(2) + "20150103,250,2,0,1\n", NAME, "250 outside the plausible range \\[-10, 60\\]"),
    ("nee-too-large", HEADER + rows(2) + "20150103,2,2,95,1\n", NAME, "NEE_VUT_USTAR50 = 95 outside"),
    ("n/a-marker", HEADER + rows(2) + "20150103,n/a,2,0,1\n", NAME, "GPP_NT_VUT_USTAR50 = 'n/a' is not a number"),
    ("NA-marker", HEADER + rows(2) + "20150103,2,NA,0,1\n", NAME, "RECO_NT_VUT_USTAR50 = 'NA' is not a number"),
    ("NaN-text", HEADER + rows(2) + "20150103,2,2,NaN,1\n", NAME, "NEE_VUT_USTAR50 = 'NaN' is not a number"),
    ("empty-field", HEADER + rows(2) + "20150103,,2,0,1\n", NAME, "GPP_NT_VUT_USTAR50 = '' is not a number"),
    ("text-value", HEADER + rows(2) + "20150103,abc,2,0,1\n", NAME, "row 4: GPP_NT_VUT_USTAR50 = 'abc' is not a number"),
    ("gpp-all-missing", HEADER + rows(gpp="-9999"), NAME, "column GPP_NT_VUT_USTAR50 holds only -9999"),
    ("reco-all-missing", HEADER + rows(reco="-9999"), NAME, "column RECO_NT_VUT_USTAR50 holds only -9999"),
    ("nee-all-missing", HEADER + rows(nee="-9999"), NAME, "column NEE_VUT_USTAR50 holds only -9999"),
    ("qc-all-missing", HEADER + rows(qc="-9999"), NAME, "column NEE_VUT_USTAR50_QC holds only -9999"),
    ("qc-percent", HEADER + rows(2) + "20150103,2,2,0,48\n", NAME, "NEE_VUT_USTAR50_QC = 48 outside the plausible range \\[0, 1\\]"),
    ("qc-negative", HEADER + rows(2) + "20150103,2,2,0,-0.5\n", NAME, "NEE_VUT_USTAR50_QC = -0.5 outside"),
    ("no-timestamp", "DATE,GPP_NT_VUT_USTAR50\n20150101,1\n", NAME, "no TIMESTAMP column"),
    ("half-hourly-columns", "TIMESTAMP_START,TIMESTAMP_END,NEE\n201501010000,201501010030,1\n", NAME, "TIMESTAMP_START/END mark a sub-daily file"),
    ("iso-dates", HEADER + "2015-01-01,1,1,0,1\n", NAME, "row 2: TIMESTAMP '2015-01-01' is malformed"),
    ("month-13", HEADER + "20151301,1,1,0,1\n", NAME, "row 2: cannot parse TIMESTAMP '20151301'"),
    ("sub-daily-stamps", HEADER + "201501010000,1,1,0,1\n", NAME, "TIMESTAMP '201501010000' is sub-daily"),
    ("duplicate-day", HEADER + rows(2) + rows(1), NAME, "duplicate day\\(s\\) \\['2015-01-01'\\]"),
    ("no-reco-column", "TIMESTAMP,GPP_NT_VUT_USTAR50\n20150101,1\n", NAME, "RECO_NT_VUT_USTAR50"),
    ("no-qc-column", HEADER.replace(",NEE_VUT_USTAR50_QC", "") + "20150101,1,1,0\n", NAME, "NEE_VUT_USTAR50_QC"),
    ("site-not-in-catalog", GOOD, NAME.replace(SITE, "XX-Nop"), "site 'XX-Nop' is not in the site catalog; pass a site table"),
    ("hh-file", GOOD, NAME.replace("_DD_", "_HH_"), "this is a HH file; cbgrid reads daily \\(DD\\)"),
    ("mm-file", GOOD, NAME.replace("_DD_", "_MM_"), "this is a MM file"),
    ("ameriflux-base-by-name", "TIMESTAMP_START,TIMESTAMP_END,NEE_PI\n", f"AMF_{SITE}_BASE_HH_1-5.csv",
     "AmeriFlux BASE file .*no GPP or RECO.*AmeriFlux FLUXNET product"),
    ("ameriflux-base-by-preamble", "# Site: US-AR1\n# Version: 1-5\nTIMESTAMP_START,NEE_PI\n", NAME, "AmeriFlux BASE file"),
    ("no-site-in-name", GOOD, "mydata.csv", "mydata.csv: cannot read a site id from the file name; keep the name the network gave it"),
    ("not-utf8", b"\xff\xfe\x00T\x00I\x00M\n", NAME, "not a readable CSV|no TIMESTAMP column"),
    ("binary-garbage", bytes(range(256)) * 4 + b"\n", NAME, "not a readable CSV|no TIMESTAMP column"),
]
for fid, text, name, pattern in READER_FAULTS:
    case(f"ingest-new-{fid}", (lambda t, n: lambda w: [*ingest(t, n)(w), "--out", w.root / "new.zarr"])(text, name),
         pattern, check=lambda w: None if not (w.root / "new.zarr").exists() else pytest.fail("a store was created"),
         changes=("in/",))
    case(f"ingest-existing-{fid}", (lambda t, n: lambda w: [*ingest(t, n)(w), "--out", w.store])(text, name),
         pattern, changes=("in/",))


def _has_site(site: str, days: int | None = None):
    def check(w):
        from cbgrid.store import open_store

        ds = open_store(w.store)
        assert site in store_sites(w)
        if days is not None:
            gpp = ds[schema.GPP].sel(site=site).values
            assert int(np.isfinite(gpp).sum()) == days
    return check


case("ingest-good-file-appends", lambda w: [*ingest(GOOD)(w), "--out", w.store], None,
     check=_has_site(SITE, days=10), changes=("in/", "s.zarr"))
case("ingest-old-generation-columns", lambda w: [*ingest(OLD_HEADER + rows())(w), "--out", w.store], None,
     check=_has_site(SITE, days=10), changes=("in/", "s.zarr"))
case("ingest-minus-9999-is-missing", lambda w: [*ingest(HEADER + rows(5) + rows(5, 6, gpp="-9999"))(w), "--out", w.store],
     None, check=_has_site(SITE, days=5), changes=("in/", "s.zarr"))
case("ingest-missing-days-are-gaps", lambda w: [*ingest(HEADER + rows(3) + rows(3, 20))(w), "--out", w.store],
     None, check=_has_site(SITE, days=6), changes=("in/", "s.zarr"))
case("ingest-no-trailing-data-after-newline-ok", lambda w: [*ingest(GOOD + "\n")(w), "--out", w.store], None,
     check=_has_site(SITE, days=10), changes=("in/", "s.zarr"))
case("ingest-period-misses-store", lambda w: [*ingest(GOOD.replace("2015", "2009"))(w), "--out", w.store],
     f"{SITE} \\(2009-01-01..2009-01-10\\) lie outside the store period 2015-01-01..2016-12-31", changes=("in/",))
case("ingest-period-misses-new-store", lambda w: [*ingest(GOOD)(w), "--out", w.root / "n.zarr", "--start", "2020-01-01"],
     "lie outside the store period 2020-01-01", changes=("in/",))
case("ingest-start-after-end", lambda w: [*ingest(GOOD)(w), "--out", w.root / "n.zarr", "--start", "2016-01-01", "--end", "2015-01-01"],
     "the start 2016-01-01 is after the end 2015-01-01", changes=("in/",))
case("ingest-no-such-file", lambda w: ["ingest", "nope.csv", "--out", w.store], "no such file or folder: nope.csv")
case("ingest-unknown-layout", lambda w: ["ingest", w.file("in/x.txt", "hello"), "--out", w.store], "not a layout cbgrid ingests",
     changes=("in/",))
case("ingest-sites-table-missing", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites", "nope.csv", "--out", w.store],
     "no site table at nope.csv", changes=("in/",))
case("ingest-sites-table-no-lat", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites",
                                             w.file("t.csv", "site,igbp\nXX-New,GRA\n"), "--out", w.store],
     "lacks column\\(s\\) \\['lat', 'lon'\\]", changes=("in/", "t.csv"))
case("ingest-sites-table-bad-lat", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites",
                                              w.file("t.csv", "site,lat,lon,igbp\nXX-New,95,10,GRA\n"), "--out", w.store],
     "row 2: lat = 95 is not a lat in \\[-90, 90\\]", changes=("in/", "t.csv"))
case("ingest-sites-table-bad-igbp", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites",
                                               w.file("t.csv", "site,lat,lon,igbp,koppen\nXX-New,50,10,FOREST,D\n"), "--out", w.store],
     "unknown igbp class 'FOREST'", changes=("in/", "t.csv"))
case("ingest-sites-table-empty", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites", w.file("t.csv", ""), "--out", w.store],
     "the site table is empty", changes=("in/", "t.csv"))
case("ingest-sites-table-new-site-ok", lambda w: [*ingest(GOOD, NAME.replace(SITE, "XX-New"))(w), "--sites",
                                                  w.file("t.csv", "site,lat,lon,igbp,koppen\nXX-New,50,10,ENF,D\n"), "--out", w.store],
     None, check=_has_site("XX-New", days=10), changes=("in/", "t.csv", "s.zarr"))
case("ingest-into-a-file", lambda w: [*ingest(GOOD)(w), "--out", w.file("plain.txt", "x")], "plain.txt is not a readable",
     changes=("in/", "plain.txt"))

# --- twin ----------------------------------------------------------------------------------
case("twin-start-after-end", lambda w: ["twin", "--out", w.root / "t.zarr", "--start", "2020-01-02", "--end", "2020-01-01"],
     "--start/--end: the start 2020-01-02 is after the end 2020-01-01; swap them")
case("twin-bad-date", lambda w: ["twin", "--out", w.root / "t.zarr", "--start", "yesterday"], "cannot read 'yesterday'")
case("twin-existing-store", lambda w: ["twin", "--out", w.store, "--sites", 3, "--start", "2015-01-01", "--end", "2015-01-31"],
     "s.zarr.*--overwrite")
case("twin-zero-sites", lambda w: ["twin", "--out", w.root / "t.zarr", "--sites", 0, "--end", "2000-03-31"], "sites")
case("twin-negative-sites", lambda w: ["twin", "--out", w.root / "t.zarr", "--sites", -4, "--end", "2000-03-31"], "sites")
case("twin-under-a-file", lambda w: ["twin", "--out", w.file("f.txt", "x") / "t.zarr", "--sites", 3, "--end", "2000-03-31"],
     "f.txt", changes=("f.txt",))
case("twin-overwrite-ok", lambda w: ["twin", "--out", w.store, "--sites", 3, "--start", "2015-01-01", "--end", "2015-01-31", "--overwrite"],
     None, check=lambda w: len(store_sites(w)) == 3 or pytest.fail("not replaced"), changes=("s.zarr",))

# --- info and the store itself --------------------------------------------------------------
def _schema_version(w, version):
    meta = w.store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc.setdefault("attributes", {})["cbgrid_schema"] = version
    meta.write_text(json.dumps(doc))
    return ["info", w.store]


def _hide_store(w):
    os.rename(w.store, w.root / ".s.zarr.old-0123abcd")
    return ["info", w.store]


case("info-no-store", lambda w: ["info", w.root / "none.zarr"], "no store at .*none.zarr")
case("info-plain-folder", lambda w: ["info", w.file("folder/a.txt", "x").parent], "folder", changes=("folder",))
case("info-a-file", lambda w: ["info", w.file("a.txt", "x")], "a.txt", changes=("a.txt",))
case("info-unknown-schema-version", lambda w: _schema_version(w, "99"), "store schema version '99'; this cbgrid reads", changes=("s.zarr/zarr.json",))
case("info-killed-between-renames-recovers", _hide_store, None,
     check=lambda w: (w.store.exists() and not list(w.root.glob(".s.zarr.old-*"))) or pytest.fail("not restored"),
     changes=("s.zarr", ".s.zarr.old"))

# --- splits ---------------------------------------------------------------------------------
def _split_text(w, edit: Callable[[list[str]], list[str]]) -> Path:
    lines = w.split.read_text().splitlines()
    return w.file("edited.csv", "\n".join(edit(lines)) + "\n")


def _relabel(lines, old, new):
    return [lines[0]] + [line.replace(old, new, 1) if i == 1 else line for i, line in enumerate(lines[1:], 1)]


def _train_with(split_path_fn):
    return lambda w: ["train", "--store", w.store, "--split", split_path_fn(w), "--model", "lstm", "--seeds", 1,
                      "--max-epochs", 1, "--hidden", 4, "--layers", 1, "--out", w.root / "r2"]


SPLIT_FAULTS = [
    ("header-only", lambda w: w.file("edited.csv", w.split.read_text().splitlines()[0] + "\n"), "lists no sites \\(a header only\\)"),
    ("empty", lambda w: w.file("edited.csv", ""), "edited.csv: the file is empty"),
    ("missing-column", lambda w: w.file("edited.csv", "site,set\nA,train\n"), "missing column\\(s\\) \\['split', 'seed', 'fold'"),
    ("bad-set", lambda w: _split_text(w, lambda ls: [ls[0]] + [ls[1].replace(",train,", ",training,").replace(",test,", ",testing,")] + ls[2:]),
     "column 'set' must be 'train', 'test' or 'excluded', found \\['training'\\]"),
    ("duplicate-site", lambda w: _split_text(w, lambda ls: ls + [ls[1]]), "duplicate site"),
    ("two-labels", lambda w: _split_text(w, lambda ls: _relabel(ls, "koppen", "igbp")), "column 'split' must hold one value"),
    ("two-seeds", lambda w: _split_text(w, lambda ls: [ls[0]] + [ls[1].replace(",koppen,0,", ",koppen,7,")] + ls[2:]),
     "column 'seed' must hold one value"),
    ("no-test", lambda w: _split_text(w, lambda ls: [ls[0]] + [line.replace(",test,,", ",train,0,") for line in ls[1:]]),
     "the split has no test sites"),
    ("no-train", lambda w: _split_text(w, lambda ls: [ls[0]] + [re.sub(r",train,\d+,", ",test,,", line) for line in ls[1:]]),
     "the split has no train sites"),
    ("fold-on-test", lambda w: _split_text(w, lambda ls: [ls[0]] + [line.replace(",test,,", ",test,2,") for line in ls[1:]]),
     "have a CV fold; folds are for train sites only"),
    ("official-label-contradicts", lambda w: _split_text(w, lambda ls: [ls[0]] + [line.replace(",koppen,", ",official-koppen,") for line in ls[1:]]),
     "labelled 'official-koppen' but site\\(s\\)"),
    ("binary", lambda w: w.file("edited.csv", b"\x00\xff\x00\xfe"), "edited.csv"),
    ("missing-file", lambda w: w.root / "nope.csv", "nope.csv"),
]
for fid, make, pattern in SPLIT_FAULTS:
    case(f"train-split-{fid}", _train_with(make), pattern, changes=("edited.csv",))

case("split-no-store", lambda w: ["split", w.root / "none.zarr", "--by", "koppen"], "no store at")
case("split-out-under-a-file", lambda w: ["split", w.store, "--by", "koppen", "--out", w.file("f.txt", "x") / "s.csv"], "f.txt",
     changes=("f.txt",))
def _official_subset(w):
    import pandas as pd

    df = pd.read_csv(w.root / "o.csv")
    official = set(catalog.official_test_sites("igbp")["site"])
    assert set(df.loc[df["set"] == "test", "site"]) == official & set(store_sites(w))


case("split-official-ok", lambda w: ["split", w.store, "--by", "official-igbp", "--out", w.root / "o.csv"],
     None, check=_official_subset, changes=("o.csv",))
case("split-igbp-too-few-sites", lambda w: ["split", w.store, "--by", "igbp", "--out", w.root / "i.csv"],
     "the split has no test sites")
case("split-unknown-kind", lambda w: ["split", w.store, "--by", "biome"], "invalid choice: 'biome'")
case("split-writes-ok", lambda w: ["split", w.store, "--by", "koppen", "--seed", 3, "--out", w.root / "i.csv"], None,
     check=lambda w: (w.root / "i.csv").exists() or pytest.fail("no split"), changes=("i.csv",))

# --- train ----------------------------------------------------------------------------------
def _train(*extra, model="lstm"):
    return lambda w: ["train", "--store", w.store, "--split", w.split, "--model", model, "--seeds", 1, "--max-epochs", 1,
                      "--hidden", 4, "--layers", 1, "--out", w.root / "r2", *map(str, extra)]


case("train-max-epochs-zero", _train("--max-epochs", 0), "max_epochs is 0; it must be a whole number >= 1")
case("train-max-epochs-negative", _train("--max-epochs", -3), "max_epochs is -3")
case("train-seeds-zero", _train("--seeds", 0), "seeds")
case("train-batch-zero", _train("--batch-size", 0), "batch")
case("train-patience-negative", _train("--patience", -1), "patience")
case("train-lr-negative", _train("--lr", -0.1), "lr")
case("train-hidden-zero", _train("--hidden", 0), "hidden")
case("train-dropout-one", _train("--dropout", 1.5), "dropout")
case("train-unknown-model", _train(model="resnet"), "unknown model 'resnet'")
case("train-unknown-protocol", _train("--protocol", "paper"), "invalid choice: 'paper'")
case("train-unknown-feature-set", _train("--feature-set", "huge"), "invalid choice: 'huge'")
case("train-no-store", lambda w: ["train", "--store", w.root / "none.zarr", "--split", w.split, "--model", "lstm",
                                  "--out", w.root / "r2"], "no store at")
case("train-existing-run", lambda w: ["train", "--store", w.store, "--split", w.split, "--model", "lstm", "--seeds", 1,
                                      "--max-epochs", 1, "--out", w.run], "run.*--overwrite")
case("train-split-sites-not-in-store", _train_with(lambda w: w.file("edited.csv", "site,split,seed,set,fold,igbp,koppen\n"
                                                                     "ZZ-Aaa,koppen,0,train,0,GRA,C\nZZ-Bbb,koppen,0,test,,GRA,C\n")),
     "ZZ-", changes=("edited.csv",))

# --- damaged runs: predict and evaluate -----------------------------------------------------
def _damage(path_fn, data: bytes | Callable[[bytes], bytes], then: Callable[[World], list]):
    def argv(w):
        p = path_fn(w)
        p.write_bytes(data(p.read_bytes()) if callable(data) else data)
        return then(w)
    return argv


def _predict(w):
    return ["predict", w.run, "--store", w.store, "--out", w.root / "p.nc"]


def _evaluate(w):
    return ["evaluate", w.run, "--out", w.report, "--no-plots"]


def _weights(w):
    return w.run / "members" / "seed-00.pt"


def _config_hidden(w):
    cfg = json.loads((w.run / "config.json").read_text())
    cfg["hparams"]["hidden"] = 16
    (w.run / "config.json").write_text(json.dumps(cfg))
    return _predict(w)


case("predict-no-run", lambda w: ["predict", w.root / "none", "--store", w.store], "none")
case("predict-not-a-run", lambda w: ["predict", w.file("x/a.txt", "x").parent, "--store", w.store], "has no config.json", changes=("x",))
case("predict-config-cut", _damage(lambda w: w.run / "config.json", lambda b: b[: len(b) // 2], _predict),
     "config.json: not readable JSON", changes=("run/config.json",))
case("predict-scaling-missing", lambda w: [(w.run / "scaling.json").unlink(), *_predict(w)][1:],
     "it has no scaling.json", changes=("run/scaling.json",))
case("predict-weights-cut", _damage(_weights, lambda b: b[: len(b) // 3], _predict), "seed-00.pt: not readable network weights",
     changes=("run/members",))
case("predict-weights-garbage", _damage(_weights, b"not a torch file", _predict), "not readable network weights",
     changes=("run/members",))
case("predict-weights-missing", lambda w: [_weights(w).unlink(), *_predict(w)][1:], "the run lacks network weights",
     changes=("run/members",))
case("predict-weights-mismatch-config", _config_hidden, "the weights do not match the network its run's config.json describes",
     changes=("run/config.json",))
case("predict-no-store", lambda w: ["predict", w.run, "--store", w.root / "none.zarr"], "no store at")
case("predict-ok", _predict, None, check=lambda w: (w.root / "p.nc").exists() or pytest.fail("no predictions"), changes=("p.nc",))
case("evaluate-predictions-cut", _damage(lambda w: w.run / "predictions.nc", lambda b: b[: len(b) // 2], _evaluate),
     "predictions.nc: not a readable NetCDF file", changes=("run/predictions.nc",))
case("evaluate-predictions-garbage", _damage(lambda w: w.run / "predictions.nc", b"\x89HDF\r\n\x1a\n" + b"0" * 64, _evaluate),
     "not a readable NetCDF file", changes=("run/predictions.nc",))
case("evaluate-predictions-missing", lambda w: [(w.run / "predictions.nc").unlink(), *_evaluate(w)][1:], "no predictions.nc",
     changes=("run/predictions.nc",))
case("evaluate-no-run", lambda w: ["evaluate", w.root / "none", "--out", w.report], "none")
case("evaluate-store-gone", lambda w: ["evaluate", w.run, "--store", w.root / "none.zarr", "--out", w.report, "--no-plots"], "no store at")
case("evaluate-split-missing", lambda w: ["evaluate", w.run, "--split", w.root / "none.csv", "--out", w.report, "--no-plots"],
     "none.csv")
case("evaluate-min-days-huge-keeps-report", lambda w: ["evaluate", w.run, "--min-days", 100000, "--out", w.report, "--no-plots"],
     "site|days|scored")
case("evaluate-rewrites-report-ok", _evaluate, None,
     check=lambda w: (w.report / "scores.csv").exists() or pytest.fail("no report"), changes=("report",))

# --- recipes and upscale --------------------------------------------------------------------
def _upscale(**changes):
    return lambda w: ["upscale", w.recipe(**changes), "--no-quicklook"]


RECIPE_FAULTS = [
    ("grid-key-typo", {"grid": {"regoin": [0, 0, 10, 10]}}, "grid: unknown key\\(s\\) \\['regoin'\\]"),
    ("drivers-key-typo", {"drivers": {"sed": 3}}, "drivers \\(source twin\\): unknown key\\(s\\) \\['sed'\\]"),
    ("period-key-typo", {"period": {"pre": "year"}}, "period: unknown key\\(s\\) \\['pre'\\]"),
    ("top-key-typo", {"ouptut": "x"}, "unknown key\\(s\\) \\['ouptut'\\]"),
    ("chunk-zero", {"chunks": {"lat": 0, "lon": 18}}, "chunks"),
    ("chunk-negative", {"chunks": {"lat": 9, "lon": -5}}, "chunks"),
    ("chunk-text", {"chunks": {"lat": "big", "lon": 18}}, "chunks"),
    ("chunk-key-typo", {"chunks": {"lat": 9, "lonn": 18}}, "unknown key\\(s\\) \\['lonn'\\]"),
    ("resolution-zero", {"grid": {"resolution": 0}}, "resolution"),
    ("resolution-negative", {"grid": {"resolution": -1}}, "resolution"),
    ("region-three-numbers", {"grid": {"region": [0, 0, 10]}}, "region"),
    ("region-inverted", {"grid": {"region": [10, 0, 0, 10]}}, "region"),
    ("period-start-after-end", {"period": {"start": "2016-08-01", "end": "2016-07-01"}}, "start|end"),
    ("period-per-week", {"period": {"per": "week"}}, "per"),
    ("period-bad-date", {"period": {"start": "July"}}, "July"),
    ("unknown-driver-source", {"drivers": {"source": "cmip6", "_replace": True}}, "cmip6"),
    ("no-drivers", {"drivers": _DROP}, "drivers"),
    ("no-runs", {"runs": []}, "names no runs"),
    ("run-missing", {"runs": ["nowhere"]}, "nowhere"),
    ("drivers-not-mapping", {"drivers": "twin"}, "drivers"),
]
for fid, changes, pattern in RECIPE_FAULTS:
    case(f"upscale-recipe-{fid}", _upscale(**changes), pattern, changes=("r.yaml",))

case("upscale-no-recipe", lambda w: ["upscale", w.root / "none.yaml"], "no recipe at")
case("upscale-recipe-not-yaml", lambda w: ["upscale", w.file("r.yaml", "name: [unclosed\n")], "r.yaml", changes=("r.yaml",))
case("upscale-recipe-a-list", lambda w: ["upscale", w.file("r.yaml", "- a\n- b\n")], "r.yaml", changes=("r.yaml",))
case("upscale-output-is-a-file", lambda w: [w.file("products", "x"), "upscale", w.recipe(), "--no-quicklook"][1:],
     "output folder .*products is a file", changes=("r.yaml", "products"))
case("upscale-region-reversed", lambda w: ["upscale", w.recipe(grid={"region": [10, 50, 0, 60]})],
     "grid.region \\[10.0, 50.0, 0.0, 60.0\\] .*min < max", changes=("r.yaml",))
case("upscale-truth-needs-twin", lambda w: ["upscale", w.recipe(drivers={"source": "local", "paths": ["x.nc"], "_replace": True}),
                                            "--truth"], "--truth needs twin drivers|x.nc", changes=("r.yaml",))


def _no_ee_credentials(w):
    for k in ("GOOGLE_APPLICATION_CREDENTIALS", "EARTHENGINE_PROJECT"):
        w.env.delenv(k, raising=False)
    w.env.setenv("HOME", str(w.root))  # no ~/.config/earthengine credentials
    return ["upscale", w.recipe(drivers={"source": "earthengine", "project": "my-project", "feature_set": "minimal",
                                         "_replace": True}), "--no-quicklook"]


case("upscale-earthengine-no-credentials", _no_ee_credentials, "Earth Engine", changes=("r.yaml", "products", ".cache"))


def _other_ensemble(w):
    main(["-q", "upscale", str(w.recipe()), "--no-quicklook"])
    shutil.copytree(w.run, w.root / "run-b")
    cfg = json.loads((w.root / "run-b" / "config.json").read_text())
    cfg["note"] = "another ensemble"
    (w.root / "run-b" / "config.json").write_text(json.dumps(cfg))
    return ["upscale", w.recipe(runs=[str(w.root / "run-b")]), "--no-quicklook"]


case("upscale-ok", _upscale(), None, check=lambda w: manifest.read(w.products)["complete"] or pytest.fail("incomplete"),
     changes=("r.yaml", "products"))
case("upscale-other-ensemble-refused", _other_ensemble, "holds the products of another ensemble .*--overwrite",
     changes=("r.yaml", "products", "run-b"))


# --- exports for evaluation tools --------------------------------------------------------------
case("export-ilamb-not-netcdf", lambda w: ["export", "ilamb", w.file("p.nc", "not a netcdf file\n"), "--out", w.root / "il"],
     "p.nc: not a NetCDF file .*cbgrid upscale", changes=("p.nc",))
def _product_and_text(w):
    assert main(["-q", "upscale", str(w.recipe()), "--no-quicklook"]) == 0
    return ["export", "ilamb", *sorted(w.products.glob("*.nc")), w.file("a.txt", "x\n"), "--out", w.root / "il"]


case("export-ilamb-one-of-two-not-netcdf", _product_and_text, "a.txt: not a NetCDF file",
     changes=("a.txt", "r.yaml", "products"))
case("export-ilamb-missing-file", lambda w: ["export", "ilamb", w.root / "none.nc", "--out", w.root / "il"],
     "product file .*none.nc does not exist")
case("export-ilamb-sites-no-store", lambda w: ["export", "ilamb-sites", w.root / "none.zarr", "--out", w.root / "il"],
     "no store at .*none.zarr")


# ------------------------------------------------------------------------------------------
def run_case(c: Case, w: World, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in c.argv(w)])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    return code, capsys.readouterr().err


def _changed(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    keys = set(before) | set(after)
    diff = [k for k in keys if before.get(k) != after.get(k)]
    return sorted(k for k in diff if not any(k.startswith(a) for a in allowed) and "cbgrid-products.json" not in k)


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_case(c: Case, world: World, capsys):
    before = snapshot(world.root)
    code, err = run_case(c, world, capsys)
    assert "Traceback" not in err, err
    if c.outcome == "error":
        assert code != 0, f"exit 0; stderr: {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^(cbgrid \S+: error: |usage: |cbgrid(\s\S+)?: error: )", line)]
        assert errors, err
        message = errors[-1]
        assert len([line for line in lines if not line.startswith("usage:") and not line.startswith(" ")]) == 1, err
        assert re.search(c.expect, message), f"{message!r} does not match {c.expect!r}"
    else:
        assert code == 0, err
        c.check(world)
    assert _changed(before, snapshot(world.root), c.changes) == [], "files written before were changed"


def test_the_catalogue_is_large_and_states_each_outcome():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    counts = {o: sum(c.outcome == o for c in CASES) for o in ("error", "ok")}
    assert counts["error"] > 0 and counts["ok"] > 0


# ------------------------------------------------------------------------------------------
# real processes: concurrency and signals
def _cli(*argv, **kw) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cbgrid", "-q", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _catalog_sites(n: int, exclude) -> list[str]:
    table = catalog.sites()
    return [s for s in table["site"] if s not in set(exclude)][:n]


def _local_driver_recipe(w: World, *, celsius_as_kelvin: bool) -> Path:
    """The world's recipe on local NetCDF drivers: the twin's 10° grid written as a CDS-like file."""
    import pandas as pd

    from cbgrid.sources import twin

    lat, lon = np.arange(-85.0, 90, 10.0), np.arange(-175.0, 180, 10.0)
    ds = twin.twin_grid(lat, lon, pd.date_range("2016-05-01", "2016-07-02"), seed=0, with_truth=False).load()
    ds = ds[[v for v in ds.data_vars if ds[v].dims == ("time", "lat", "lon")]].reset_coords(drop=True)
    if celsius_as_kelvin:
        ds["temperature_2m"] = (ds["temperature_2m"] - 273.15).assign_attrs(ds["temperature_2m"].attrs)
    path = w.root / "drivers.nc"
    ds.to_netcdf(path)
    return w.recipe(drivers={"source": "local", "paths": [str(path)], "_replace": True})


def test_an_implausible_local_driver_ends_in_one_line_not_a_crash(world):
    """A chunk refused while others are still being read from NetCDF in dask threads: the writer's
    netCDF4 calls share xarray's lock, so unwinding does not close files under a reader (before,
    this crashed the process with a bus error)."""
    recipe = _local_driver_recipe(world, celsius_as_kelvin=True)
    for _ in range(2):  # without the shared lock both runs crashed (SIGSEGV or SIGBUS)
        p = _cli("upscale", recipe, "--no-quicklook")
        _, err = p.communicate(timeout=600)
        assert p.returncode == 2, (p.returncode, err)
        lines = [line for line in err.splitlines() if line.strip() and "WARNING" not in line]
        assert len(lines) == 1 and re.match(r"cbgrid upscale: error: .*drivers.nc: temperature_2m = -?[\d.]+ K "
                                            r"outside its plausible range \[150, 350\]", lines[0]), err
        assert not list(world.products.glob("*.nc")) and not list(world.products.glob(".*.tmp-*"))
    assert main(["-q", "upscale", str(_local_driver_recipe(world, celsius_as_kelvin=False)), "--no-quicklook"]) == 0
    assert len(list(world.products.glob("*.nc"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_two_concurrent_ingests_lose_nothing(world, trial):
    sites = _catalog_sites(2, store_sites(world))
    files = [world.file(f"in/AMF_{s}_FLUXNET_SUBSET_DD_2015-2015_3-5.csv", GOOD) for s in sites]
    procs = [_cli("ingest", f, "--out", world.store) for f in files]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert set(sites) <= set(store_sites(world))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.parametrize("after", [0.5, 2.0, 4.0, 6.0])
def test_a_signal_during_ingest_leaves_the_old_store(world, sig, after):
    before = store_sites(world)
    old = open_store(world.store).load()
    f = world.file(f"in/{NAME}", GOOD)
    p = _cli("ingest", f, "--out", world.store)
    time.sleep(after)
    p.send_signal(sig)
    _, err = p.communicate(timeout=600)
    assert p.returncode in (0, 130, -signal.SIGKILL, -signal.SIGINT), err  # finished, or stopped by the signal
    # a SIGINT while Python itself starts (before cbgrid's code runs) is Python's own traceback
    assert "Traceback" not in err or "cbgrid/cli/__init__.py" not in err, err
    # whatever the timing, the next command sees the old store or the new one, whole
    assert main(["-q", "info", str(world.store)]) == 0
    now = store_sites(world)
    assert now in (before, before + [SITE])
    if now == before:
        # the committed store reads exactly as before; an append stopped between resizing its
        # arrays and committing leaves bytes beyond the commit, which the next write rolls back
        xr.testing.assert_identical(open_store(world.store).load(), old)
    assert main(["-q", "ingest", str(f), "--out", str(world.store)]) == 0  # and the ingest can be re-run
    assert store_sites(world) == before + [SITE]


@pytest.mark.slow
@pytest.mark.parametrize("after", [1.0, 3.0, 6.0])
def test_sigkill_during_twin_overwrite_keeps_the_old_store(world, after):
    before = store_sites(world)
    p = _cli("twin", "--out", world.store, "--sites", 20, "--start", "2010-01-01", "--end", "2016-12-31", "--overwrite")
    time.sleep(after)
    p.kill()
    _, err = p.communicate(timeout=600)
    assert p.returncode in (0, -signal.SIGKILL), err
    assert main(["-q", "info", str(world.store)]) == 0  # the next command restores or removes what the kill left
    assert len(store_sites(world)) in (len(before), 20)
    assert not [q for q in world.root.iterdir() if q.name.startswith(".s.zarr.") and not q.name.endswith(".lock")]


def test_a_second_writer_waits_for_the_lock(tmp_path):
    """Two real processes hold one store's writer lock one after the other, never together."""
    script = (
        "import sys, time; from cbgrid.atomic import writer_lock\n"
        "with writer_lock(sys.argv[1]):\n"
        "    open(sys.argv[2], 'a').write(f'in {time.time()}\\n'); time.sleep(1.0)\n"
        "    open(sys.argv[2], 'a').write(f'out {time.time()}\\n')\n"
    )
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "s.zarr"), str(log)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["in", "out", "in", "out"]


@pytest.mark.parametrize("replace", ["file", "dir"])
def test_an_error_while_writing_names_the_target_not_its_temporary_sibling(tmp_path, replace):
    """What fails on the hidden ``.NAME.tmp-*`` sibling is reported on the path the user asked for."""
    from cbgrid import atomic

    target = tmp_path / "out.csv"
    writer = atomic.replace_file(target) if replace == "file" else atomic.replace_dir(target, overwrite=False)
    with pytest.raises(FileNotFoundError) as info, writer as tmp:
        (tmp / "sub" / "x.txt").write_text("x")  # tmp is neither a file nor a folder yet
    assert info.value.filename == str(target / "sub" / "x.txt")
    assert ".tmp-" not in str(info.value)
    assert not list(tmp_path.glob(".out.csv.tmp-*")) and not target.exists()


if __name__ == "__main__":
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    print(f"{len(CASES)} in-process cases: {counts}; plus the real-process cases (concurrency, signals)")
