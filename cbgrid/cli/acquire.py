"""Earth Engine commands: ``acquire sites`` (features into the store), ``acquire grid`` (driver grids)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cbgrid import catalog, store
from cbgrid.errors import ExistsError, InputError
from cbgrid.recipe import load_recipe
from cbgrid.sources import earthengine as ee_src

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("acquire", help="fetch MODIS and ERA5-Land features from Google Earth Engine (your own credentials)")
    acq = p.add_subparsers(dest="acquire_command", metavar="WHAT", required=True)

    s = acq.add_parser(
        "sites",
        help="per-site MOD09GA (2 km window) and ERA5-Land features, merged into a store",
        description="Fetch daily MOD09GA reflectance, angles and cloud fraction (2 km x 2 km window mean) and "
        "ERA5-Land DAILY_AGGR bands at every site, one request per site and year, cached so a re-run resumes; "
        "the store is written or updated only once every chunk is in the cache.",
    )
    s.add_argument("--out", required=True, type=Path, help="store to create, or to add the features / sites to")
    s.add_argument("--sites", type=Path, default=None, help="site table CSV (site, lat, lon, igbp, koppen); default: the packaged site catalog")
    s.add_argument("--site", action="append", default=None, metavar="ID", help="only this site (repeatable)")
    s.add_argument("--features", default="minimal", choices=catalog.FEATURE_SETS, help="ERA5-Land feature set (the 12 MODIS features come with every set)")
    s.add_argument("--method", default="default", choices=ee_src.METHODS,
                   help="default: MODIS 2 km window at 463 m, ERA5-Land tower pixel; reference: the CarbonBench "
                   "extraction (1 km buffer box, MODIS at 500 m with clouds = state bit 0, ERA5-Land bilinear at 2 km, "
                   "days missing a band dropped)")
    s.add_argument("--start", default=None, help="first day (default: the existing store's first day)")
    s.add_argument("--end", default=None, help="last day (default: the existing store's last day)")
    s.add_argument("--cache", type=Path, default=None, help="per-site, per-year response cache (default: <out>.ee-cache beside the store)")
    _common(s)
    s.add_argument("--workers", type=int, default=10, help="concurrent Earth Engine requests (default 10; a project may run 40)")
    s.add_argument("--overwrite", action="store_true", help="replace features the store already has for these sites")
    s.set_defaults(func=cmd_sites)

    g = acq.add_parser(
        "grid",
        help="download a recipe's driver grids to Zarr (resumable), or open them lazily through xee",
        description="ERA5-Land and MOD09GA (area-averaged onto the recipe grid) for the recipe's region, "
        "resolution and period, with the store's variable names and units; one request per chunk, sized to "
        "Earth Engine's limits. With --zarr a killed run re-run with the same arguments fetches only what is missing.",
    )
    g.add_argument("recipe", type=Path, help="product recipe YAML with drivers.source: earthengine")
    g.add_argument("--zarr", type=Path, default=None, help="save the grids to this Zarr store (otherwise only describe them)")
    g.add_argument("--chunk-days", type=int, default=None, help="at most this many days per request (default: as many as fit)")
    g.add_argument("--pixels-per-request", type=float, default=ee_src.PIXELS_PER_REQUEST,
                   help=f"input pixels one request may read (default {ee_src.PIXELS_PER_REQUEST:.0e})")
    g.add_argument("--workers", type=int, default=8, help="concurrent Earth Engine requests (default 8; a project may run 40)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --zarr store")
    _common(g)
    g.set_defaults(func=cmd_grid)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="Google Cloud project with the Earth Engine API (default: $EARTHENGINE_PROJECT, then $GOOGLE_CLOUD_PROJECT, then the service account's)")
    p.add_argument("--service-account", type=Path, default=None, metavar="KEY.json",
                   help="authenticate with this service-account key (default: $GOOGLE_APPLICATION_CREDENTIALS when it is one, "
                   "else your `earthengine authenticate` credentials)")
    p.add_argument("--max-tries", type=int, default=6, help="attempts per request on rate limits and transient errors, in all (default 6)")
    p.add_argument("--timeout", type=float, default=ee_src.DEADLINE_S,
                   help=f"seconds before a silent connection counts as failed and is retried (default {ee_src.DEADLINE_S:g})")
    p.add_argument("--dry-run", action="store_true", help="print the request plan (requests, bytes, time) and stop")


def _fail(args, err) -> int:
    print(f"cbgrid acquire {args.acquire_command}: error: {err}", file=sys.stderr)
    return 1


def _show(plan, args) -> None:
    if args.dry_run or plan.requests >= ee_src.LARGE_RUN:
        print(plan.describe(), flush=True)


def cmd_sites(args) -> int:
    import pandas as pd

    sites = pd.read_csv(args.sites, keep_default_na=False) if args.sites else catalog.sites()
    if args.site:
        unknown = sorted(set(args.site) - set(sites["site"].astype(str)))
        if unknown:
            raise InputError(f"site(s) {unknown} are not in {args.sites or 'the site catalog'}")
        sites = sites[sites["site"].astype(str).isin(args.site)].reset_index(drop=True)
    start, end = args.start, args.end
    if start is None or end is None:
        if not args.out.exists():
            raise InputError("--start and --end are needed to create a new store")
        t = store.open_store(args.out).indexes["time"]
        start, end = start or str(t[0].date()), end or str(t[-1].date())
    _show(ee_src.sites_plan(len(sites), start, end, feature_set=args.features, workers=args.workers, method=args.method), args)
    if args.dry_run:
        return 0
    cache = args.cache or args.out.with_name(args.out.name + ".ee-cache")
    progress = not args.quiet
    try:
        ds = ee_src.acquire_sites(
            sites, start, end, feature_set=args.features, cache_dir=cache, project=args.project,
            service_account=args.service_account, workers=args.workers, max_tries=args.max_tries, progress=progress,
            method=args.method, deadline_s=args.timeout,
        )
    except ee_src.EarthEngineError as e:
        return _fail(args, e)
    result = store.merge(ds, args.out, overwrite=args.overwrite, progress=progress)
    merged = store.open_store(args.out)
    print(
        f"store      {args.out} ({'created' if result['created'] else 'updated'})\n"
        f"acquired   {ds.sizes['site']} sites x {ds.sizes['time']} days, {len(ds.data_vars)} features "
        f"({args.features}, {args.method} sampling)\n"
        f"added      {result['sites_added']} site(s), {len(result['variables_added'])} variable(s)\n"
        f"store now  {merged.sizes['site']} sites, {merged.sizes['time']} days, {len(merged.data_vars)} variables\n"
        f"cache      {cache}"
        + (f"\ncoastal    ERA5-Land from the nearest land pixels for {ds.attrs['era5_land_coastal_fallback']}"
           if ds.attrs.get("era5_land_coastal_fallback") else "")
    )
    return 0


def cmd_grid(args) -> int:
    recipe = load_recipe(args.recipe)
    grid = ee_src.grid_for_recipe(recipe, project=args.project, service_account=args.service_account,
                                  chunks={"time": args.chunk_days} if args.chunk_days else None,
                                  max_tries=args.max_tries, workers=args.workers,
                                  pixels_per_request=args.pixels_per_request, deadline_s=args.timeout)
    _show(grid.plan, args)
    if args.dry_run:
        return 0
    if args.zarr and args.zarr.exists() and not args.overwrite:
        raise ExistsError(f"{args.zarr} exists; pass --overwrite to replace it")
    try:
        if args.zarr:
            ee_src.save_grid(grid, args.zarr, overwrite=args.overwrite, workers=args.workers, progress=not args.quiet)
        else:
            grid.open()
    except ee_src.EarthEngineError as e:
        return _fail(args, e)
    ds = grid.template()
    print(
        f"grid       {recipe.name}: {ds.sizes['lat']} x {ds.sizes['lon']} cells at {recipe.grid.resolution} deg, "
        f"{ds.sizes['time']} days ({recipe.period.start.date()} .. {recipe.period.end.date()})\n"
        f"variables  {len(ds.data_vars)}: {', '.join(ds.data_vars)}\n"
        f"requests   {grid.plan.requests:,} (one per chunk and variable: "
        + "; ".join(f"{s} {c.days} days x {c.height} x {c.width} cells" for s, c in grid.chunks.items()) + ")"
        + (f"\nsaved      {args.zarr}" if args.zarr else "")
    )
    return 0
