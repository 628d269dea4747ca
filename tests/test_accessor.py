"""The ``ds.cbgrid`` accessor on stores, scores and products."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cbgrid  # noqa: F401  (registers the accessor)
from cbgrid import evaluation, product, schema, testing
from cbgrid.grid import Grid


def test_store_classes_selection_and_cube():
    ds = testing.site_store(n_sites=8, days=5)
    names = ds.cbgrid.classes("igbp")
    assert names.dims == ("site",) and list(names.values) == list(schema.class_names(ds, "igbp"))
    enf = ds.cbgrid.sites(igbp="ENF")
    assert set(enf.cbgrid.classes("igbp").values) == {"ENF"} and enf.sizes["site"] >= 1
    both = ds.cbgrid.sites(igbp=["ENF", "GRA"], koppen=list(schema.KOPPEN_CLASSES))
    assert set(both.cbgrid.classes("igbp").values) <= {"ENF", "GRA"}
    cube = ds.cbgrid.cube()
    assert cube.dims == ("site", "time", "variable") and cube.sizes["variable"] == len(ds.data_vars)
    named = ds.cbgrid.with_class_names()
    assert (named["igbp_name"].values == names.values).all() and named["igbp"].dtype == np.int8
    with pytest.raises(ValueError, match="not known"):
        ds.cbgrid.sites(igbp="FOREST")
    with pytest.raises(KeyError, match="not in the dataset"):
        ds.cbgrid.cube(["nope"])


def test_scores_and_products_give_names_too(tmp_path):
    ds = testing.site_store(n_sites=4, days=40, qc_fraction=1.0)
    scores = evaluation.evaluate(testing.predictions(ds), ds, list(ds.site.values), min_days=5)
    assert list(scores.cbgrid.classes("igbp").values) == list(schema.class_names(ds, "igbp"))
    g = Grid(30.0)
    days = pd.date_range("2020-01-01", periods=2)
    path = product.write_product(testing.random_fluxes(g.lat, g.lon, days), tmp_path / "p.nc",
                                 context=testing.random_context(g.lat, g.lon), attrs={"Conventions": "CF-1.8"})
    p = product.open_product(path)
    names = p.cbgrid.classes("igbp")
    assert names.dims == ("lat", "lon") and set(names.values.ravel()) <= {*schema.IGBP_CLASSES, "no_data"}
