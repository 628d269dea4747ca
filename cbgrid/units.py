"""Units of carbon fluxes in model files: parse, check, convert to the store's flux unit.

Conversions go through ``cf_units``, the UDUNITS-2 library the CF conventions are defined
against: a unit string means in cbgrid exactly what it means to CF checkers, CMOR and the
netCDF tools evaluators use ("kg m-2 s-1", "g m-2 d-1", "mol m-2 s-1", "1e-3 kg m-2 day-1" all
parse; calendars and time units are left to ``cftime``). pint-based libraries (pint-xarray,
cf-xarray's registry) re-implement UDUNITS' grammar in part and parse a few CF spellings
differently, and they would add a registry to keep in step; UDUNITS is the reference itself.

Carbon fluxes are often written with the element in the unit — "gC m-2 d-1", "kg C m-2 s-1",
"g C/m2/day" — which UDUNITS does not know ("C" would be coulomb). :func:`carbon_units` removes
that marker before parsing, and amounts of substance ("umol m-2 s-1", "umol CO2 m-2 s-1") are
turned into carbon mass with the molar mass of carbon. UDUNITS' ``year`` is the tropical year
(365.242198781 days), so "gC m-2 yr-1" divides by that, not by 365 or 365.25. The target unit is the store's
(``catalogs/variables.csv``: ``gC m-2 d-1`` for the three targets).

>>> carbon_units("kg C m-2 s-1")
'kg m-2 s-1'
>>> round(conversion_factor("kg m-2 s-1"), 3)
86400000.0
>>> round(conversion_factor("umol CO2 m-2 s-1"), 5)
1.03775
"""

from __future__ import annotations

import functools
import re

import xarray as xr

from cbgrid import catalog, schema
from cbgrid.errors import InputError
from cbgrid.runtime import require

#: g mol-1: molar mass of carbon (IUPAC standard atomic weight, conventional value).
CARBON_MOLAR_MASS = 12.011

# "gC", "kgC", "g C", "PgC", "kg C" (the element after a mass unit), and "CO2"/"C" after "mol".
_MASS_C = re.compile(r"(?<![A-Za-z])((?:[kmunpTGP]|Pg|Tg|Gg|Mg)?g)\s*(?:C|CO2)(?![A-Za-z0-9])")
_MOL_C = re.compile(r"(?<![A-Za-z])((?:[munpk]|µ)?mol)\s*(?:C|CO2)(?![A-Za-z0-9])")


def carbon_units(units: str) -> str:
    """``units`` without the carbon marker UDUNITS does not read ("gC" → "g", "umol CO2" → "umol").

    >>> carbon_units("gC m-2 d-1")
    'g m-2 d-1'
    >>> carbon_units("umol CO2 m-2 s-1")
    'umol m-2 s-1'
    """
    text = " ".join(str(units).replace("µ", "u").split())
    text = _MASS_C.sub(r"\1", text)
    return _MOL_C.sub(r"\1", text)


@functools.lru_cache(maxsize=256)
def conversion_factor(units: str, target: str | None = None, *, what: str = "the variable") -> float:
    """The factor that turns a carbon flux in ``units`` into ``target`` (default: the store's
    flux unit, gC m-2 d-1). InputError naming ``what`` when ``units`` is empty, unreadable or
    not a carbon mass (or amount) flux per area.
    """
    cf_units = require("cf_units", "converting model units")
    target = target or target_units()
    if units is None or not str(units).strip():
        raise InputError(f"{what} has no 'units' attribute; set it (e.g. 'kg m-2 s-1' for CMIP6 fluxes)")
    to = cf_units.Unit(carbon_units(target))
    try:
        u = cf_units.Unit(carbon_units(units))
    except ValueError:
        raise InputError(f"{what}: units {units!r} are not readable by UDUNITS; write a carbon flux such as "
                         "'kg m-2 s-1' or 'gC m-2 d-1'") from None
    if u.is_convertible(to):
        factor = float(u.convert(1.0, to))
    else:
        mol = cf_units.Unit("mol m-2 s-1")
        if not u.is_convertible(mol):
            raise InputError(f"{what}: units {units!r} are not a carbon flux (mass of carbon per area and time, "
                             f"convertible to {target!r}); check the variable or its units attribute")
        factor = float(u.convert(1.0, mol)) * CARBON_MOLAR_MASS * float(cf_units.Unit("g m-2 s-1").convert(1.0, to))
    if float(u.convert(0.0, to) if u.is_convertible(to) else 0.0) != 0.0:
        raise InputError(f"{what}: units {units!r} have an offset; a flux cannot")
    return factor


def target_units(name: str = schema.GPP) -> str:
    """The store's unit of target ``name`` (catalogs/variables.csv)."""
    return str(catalog.variable(name)["units"])


def to_store_units(da: xr.DataArray, *, what: str = "", target: str | None = None) -> xr.DataArray:
    """``da`` (lazy or not) in the store's flux unit, attributes kept, ``units`` set."""
    name = what or f"variable {da.name!r}"
    factor = conversion_factor(da.attrs.get("units"), target, what=name)
    out = da if factor == 1.0 else da * factor
    out.attrs = {**da.attrs, "units": target or target_units(),
                 "original_units": str(da.attrs.get("units"))}
    return out
