import numpy as np
import pytest

from cbgrid import schema
from cbgrid.schema import SchemaError


def test_site_dataset_validates_and_decodes(small_ds):
    schema.validate(small_ds)
    assert small_ds[schema.GPP].dtype == np.float32
    assert small_ds[schema.GPP].attrs["units"] == "gC m-2 d-1"
    names = schema.class_names(small_ds, "igbp")
    assert set(names) <= set(schema.IGBP_CLASSES)
    assert small_ds["igbp"].attrs["flag_meanings"].split()[1] == "ENF"


def test_encode_rejects_unknown_igbp():
    with pytest.raises(SchemaError, match="unknown igbp class 'XYZ'"):
        schema.encode("igbp", ["ENF", "XYZ"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ds: ds.assign_coords(lat=ds.lat.copy(data=np.r_[95.0, ds.lat.values[1:]])), "lat = 95.0 is outside"),
        (lambda ds: ds.assign_coords(igbp=ds.igbp.copy(data=np.r_[np.int8(40), ds.igbp.values[1:]])), "igbp code 40"),
        (lambda ds: ds.rename({"temperature_2m": "t2m"}), "'t2m' is not in the variable catalog"),
        (lambda ds: ds.assign(temperature_2m=ds.temperature_2m.astype("f8")), "float64; expected float32"),
        (lambda ds: ds.assign(temperature_2m=ds.temperature_2m.assign_attrs(units="degC")), "units 'degC'; expected 'K'"),
        (lambda ds: ds.isel(time=[0, 1, 3]), "consecutive days"),
        (lambda ds: ds.drop_vars("koppen"), "'koppen' is missing"),
        (lambda ds: ds.rename({"site": "station"}), "no 'site' dimension"),
    ],
)
def test_validate_names_the_problem(small_ds, mutate, message):
    with pytest.raises(SchemaError, match=message):
        schema.validate(mutate(small_ds))


def test_site_table_out_of_range_latitude():
    import pandas as pd

    sites = pd.DataFrame({"site": ["X-1"], "lat": [91.0], "lon": [0.0], "igbp": ["ENF"], "koppen": ["C"]})
    with pytest.raises(SchemaError, match="'X-1': lat = 91.0"):
        schema.site_coords(sites)
