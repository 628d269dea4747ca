"""Versioned catalog data shipped with cbgrid (installed as ``cbgrid.catalogs``)."""
