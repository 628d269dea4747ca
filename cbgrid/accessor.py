"""The ``.cbgrid`` accessor on xarray Datasets: class names, site selection, the cube view.

Registered when ``cbgrid`` is imported. Works on a store (site coordinates as int codes with
``flag_values``/``flag_meanings``), on scores (class names) and on products (lat/lon layers
with flags) alike:

>>> import cbgrid, cbgrid.testing
>>> ds = cbgrid.testing.site_store(n_sites=3, days=4)
>>> ds.cbgrid.classes("igbp").values.tolist()
['MF', 'ENF', 'GRA']
>>> ds.cbgrid.sites(igbp="GRA").sizes["site"]
1
>>> ds.cbgrid.cube().dims
('site', 'time', 'variable')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from cbgrid import schema
from cbgrid.errors import InputError, UnknownError
from cbgrid.schema import SITE, TIME


def _names(da: xr.DataArray, name: str) -> np.ndarray:
    """Class names of a categorical coordinate or layer: decoded from its flags, or as given."""
    values = np.asarray(da.values)
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(object)
    attrs = da.attrs
    if "flag_values" in attrs and "flag_meanings" in attrs:
        lookup = dict(zip(np.asarray(attrs["flag_values"]).tolist(), str(attrs["flag_meanings"]).split()))
        return np.vectorize(lambda c: lookup.get(int(c), "unknown"), otypes=[object])(values)
    return schema.decode(name, values)


@xr.register_dataset_accessor("cbgrid")
class CbgridAccessor:
    """``ds.cbgrid``: see the module docstring."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def classes(self, name: str) -> xr.DataArray:
        """Class names of categorical coordinate ``name`` ('igbp', 'koppen', 'koppen_detailed',
        'network'), with the same dims as the codes."""
        if name not in self._ds.variables:
            raise UnknownError(f"the dataset has no {name!r} coordinate; it has {sorted(self._ds.coords)}")
        da = self._ds[name]
        return xr.DataArray(_names(da, name), dims=da.dims, coords={d: self._ds[d] for d in da.dims if d in self._ds.coords},
                            name=f"{name}_name")

    def with_class_names(self) -> xr.Dataset:
        """The dataset with ``<name>_name`` coordinates (class names) beside every class code."""
        extra = {f"{c}_name": self.classes(c) for c in schema.CATEGORICALS if c in self._ds.variables}
        return self._ds.assign_coords(extra)

    def sites(self, **classes: str | Sequence[str]) -> xr.Dataset:
        """The sites whose classes match, e.g. ``sites(igbp="ENF", koppen=["C", "D"])``."""
        if SITE not in self._ds.dims:
            raise InputError("sites() selects along the 'site' dimension, which this dataset lacks")
        keep = np.ones(self._ds.sizes[SITE], dtype=bool)
        for name, wanted in classes.items():
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            names = self.classes(name).values
            known = set(names.tolist())
            unknown = [w for w in wanted if w not in known and w not in schema.CATEGORICALS.get(name, ((), 0))[0]]
            if unknown:
                raise InputError(f"{name} class(es) {unknown} are not known; the data hold {sorted(known)}")
            keep &= np.isin(names, wanted)
        return self._ds.isel({SITE: np.flatnonzero(keep)})

    def cube(self, variables: Sequence[str] | None = None) -> xr.DataArray:
        """The site × time × variable view of a store (``variables`` default: all of them)."""
        names = list(variables) if variables is not None else list(self._ds.data_vars)
        missing = [v for v in names if v not in self._ds.data_vars]
        if missing:
            raise UnknownError(f"variables {missing} are not in the dataset")
        return self._ds[names].to_dataarray("variable").transpose(SITE, TIME, "variable")

    def validate(self) -> xr.Dataset:
        """``cbgrid.schema.validate``: the dataset unchanged, or a SchemaError naming what is wrong."""
        return schema.validate(self._ds)
