"""``tfda era5 download|prepare``: fetch ERA5 for FourCastNet through cdsapi and turn
the files into one tidy netCDF (time, variable, lat, lon).

    tfda era5 download --lee --out data/era5            # 2023-09-05 00 .. 09-16 00 UTC, 6-hourly
    tfda era5 download --start 2023-09-05 --end 2023-09-08T18 --out data/era5 --dry-run
    tfda era5 prepare --in data/era5 --out data/era5_lee.nc
    tfda era5 download --lee --source arco --out data/era5_lee.nc   # no CDS key; prepared file

``--source arco`` reads ERA5 through earth2studio's ARCO data source (the optional
extra ``pip install "tfda[earth2studio]"``, tfda.interop.e2s_data) and writes the
prepared netCDF directly, so no ``prepare`` step follows.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import torch

from tfda.experiments._errors import ArgumentParser, UserError, command
from tfda.experiments.resources import MAX_TIMES
from tfda.experiments.rundir import check_out_dir
from tfda.observations import era5

LEE_START = datetime(2023, 9, 5, 0)
LEE_END = datetime(2023, 9, 16, 0)


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO date/time: {text!r} (e.g. 2023-09-05 or 2023-09-05T18)") from exc


def time_range(start: datetime, end: datetime, step_hours: int) -> list[datetime]:
    """start, start + step, ... up to and including end."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    if step_hours <= 0:
        raise ValueError(f"--step-hours must be > 0, got {step_hours}")
    n = int((end - start) / timedelta(hours=step_hours))
    if n + 1 > MAX_TIMES:  # counted before a list of them is built
        raise ValueError(f"--start {start:%Y-%m-%dT%H} .. --end {end:%Y-%m-%dT%H} at "
                         f"--step-hours {step_hours}: {n + 1:,} times, more than the "
                         f"{MAX_TIMES:,} one request accepts (shorten the window)")
    return [start + timedelta(hours=step_hours * k) for k in range(n + 1)]


def _window(args: argparse.Namespace, *, required: bool) -> list[datetime] | None:
    start = LEE_START if args.lee and args.start is None else args.start
    end = LEE_END if args.lee and args.end is None else args.end
    if start is None and end is None and not required:
        return None
    if start is None or end is None:
        raise ValueError("give --start and --end (or --lee for the Hurricane Lee window)")
    return time_range(start, end, args.step_hours)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfda era5", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def window(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--start", type=_when, help="first time, ISO (2023-09-05[T00])")
        sp.add_argument("--end", type=_when, help="last time, inclusive (a date means 00 UTC)")
        sp.add_argument("--step-hours", type=int, default=6, help="spacing (default 6)")
        sp.add_argument("--lee", action="store_true",
                        help=f"Hurricane Lee window {LEE_START:%Y-%m-%d} .. {LEE_END:%Y-%m-%d}")
        sp.add_argument("--channels", default=",".join(era5.FOURCASTNET_CHANNELS),
                        help="comma-separated channels (default: the 20 FourCastNet ones)")

    d = sub.add_parser("download", help="retrieve ERA5 netCDF files from the CDS (or ARCO)")
    window(d)
    d.add_argument("--source", choices=("cds", "arco"), default="cds",
                   help="cds (default, needs a CDS key) or arco (earth2studio's ARCO ERA5, "
                        "no key; writes the prepared netCDF)")
    d.add_argument("--out", required=True,
                   help="directory for the files (cds); the prepared netCDF file (arco)")
    d.add_argument("--allow-any-grid", action="store_true",
                   help="arco: skip the check for FourCastNet's 721x1440 0.25-degree grid")
    d.add_argument("--retries", type=int, default=4, help="attempts per file (default 4)")
    d.add_argument("--backoff", type=float, default=30.0, help="first retry wait, s (doubles)")
    d.add_argument("--dry-run", action="store_true", help="print the requests, fetch nothing")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--force", action="store_true",
                   help="arco: replace an existing --out file that tfda did not write")

    q = sub.add_parser("prepare", help="merge downloaded files into one tidy netCDF")
    window(q)
    q.add_argument("--in", dest="inputs", nargs="+", required=True,
                   help="a directory of ERA5 *.nc files, or files")
    q.add_argument("--out", required=True, help="output netCDF file")
    q.add_argument("--allow-any-grid", action="store_true",
                   help="skip the check for FourCastNet's 721x1440 0.25-degree grid")
    q.add_argument("--force", action="store_true",
                   help="replace an existing --out file that tfda did not write")
    return p


def check_prepare_out(out: str, inputs: list[str], force: bool) -> None:
    """``prepare --out``: a file to write, never one of the ``--in`` files, and an existing
    file only when tfda wrote it (its ``history`` says so) or ``--force``."""
    target = Path(out)
    if target.is_dir():
        raise UserError(f"--out {out}: is a directory; give the netCDF file to write")
    check_out_dir(target.parent, "--out")
    for item in inputs:
        src = Path(item)
        if target.exists() and src.exists() and src.samefile(target):
            raise UserError(f"--out {out}: is also --in {item}; write the prepared file "
                            "elsewhere, the input stays as it is")
    if not target.exists():
        return
    if force:
        return
    try:
        import netCDF4

        with netCDF4.Dataset(target) as nc:
            ours = "written by tfda" in str(getattr(nc, "history", ""))
    except OSError:
        ours = False
    if not ours:
        raise UserError(f"--out {out}: exists and was not written by tfda; choose another "
                        "file, or add --force to replace it")


def check_channels(tensor: torch.Tensor, coords: dict) -> None:
    """Refuse a channel that is all NaN at some time (a wrong level or variable in the
    download); warn, naming them, about channels with some NaN values."""
    nan = torch.isnan(tensor).flatten(2)  # (time, channel, points)
    times = [str(t)[:16] for t in coords["time"]]
    for c, name in enumerate(coords["channel"]):
        empty = [times[k] for k in nan[:, c].all(-1).nonzero()[:, 0].tolist()]
        if empty:
            raise UserError(f"channel {name} is all NaN at {', '.join(empty[:4])}"
                            f"{' ...' if len(empty) > 4 else ''} ({len(empty)} of "
                            f"{len(times)} times): check the downloaded files")
        some = [times[k] for k in nan[:, c].any(-1).nonzero()[:, 0].tolist()]
        if some:
            print(f"tfda era5 prepare: warning: channel {name} has NaN values at "
                  f"{', '.join(some[:4])}{' ...' if len(some) > 4 else ''}", file=sys.stderr)


def _download_arco(times: list[datetime], out: str, channels: list[str],
                   allow_any_grid: bool, *, dry_run: bool = False, force: bool = False) -> int:
    """``download --source arco``: earth2studio's ARCO straight to the prepared file."""
    if Path(out).is_dir():
        raise UserError(f"--out {out}: is a directory; with --source arco give the netCDF "
                        "file to write")
    from tfda.interop.e2s_data import download_arco, source_variables  # the optional extra

    if dry_run:
        for c in channels:
            era5.channel_spec(c)  # a channel tfda does not know is named here too
        print(json.dumps({"source": "earth2studio.data.ARCO", "target": out,
                          "variables": source_variables(channels),
                          "times": [t.isoformat() for t in times]}, indent=1))
        return 0
    check_prepare_out(out, [], force)

    path, tensor, coords = download_arco(times, out, channels=channels,
                                         check_grid=not allow_any_grid,
                                         validate=check_channels)
    print(f"wrote {path}: {tuple(tensor.shape)} (time, variable, lat, lon) from ARCO, "
          f"{str(coords['time'][0])[:16]} .. {str(coords['time'][-1])[:16]}")
    return 0


@command("tfda era5")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    try:
        if args.command == "download":
            times = _window(args, required=True)
            assert times is not None
            if args.source == "arco":
                return _download_arco(times, args.out, channels, args.allow_any_grid,
                                      dry_run=args.dry_run, force=args.force)
            if args.dry_run:
                reqs = era5.build_requests(times, channels=channels)
                print(json.dumps([{"dataset": r.dataset, "target": r.filename,
                                   "request": r.request} for r in reqs], indent=1))
                return 0
            paths = era5.download(times, args.out, channels=channels, retries=args.retries,
                                  backoff_s=args.backoff, progress=not args.no_progress)
            print(f"{len(paths)} ERA5 files for {len(times)} times in {args.out}")
            return 0
        times = _window(args, required=False)
        check_prepare_out(args.out, args.inputs, args.force)
        inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
        try:
            tensor, coords = era5.load_era5(inputs, times, channels=channels)
        except OSError as exc:  # netCDF4's "Unknown file format" and the like
            raise UserError(f"--in {inputs}: not readable as ERA5 netCDF ({exc})") from exc
        if not args.allow_any_grid:
            era5.check_fourcastnet_grid(coords["lat"], coords["lon"])
        check_channels(tensor, coords)
        out = era5.write_netcdf(args.out, tensor, coords)
        print(f"wrote {out}: {tuple(tensor.shape)} (time, variable, lat, lon), "
              f"{str(coords['time'][0])[:16]} .. {str(coords['time'][-1])[:16]}")
        return 0
    except era5.Era5AccessError as exc:  # credentials/licence: the user's to fix
        raise UserError(str(exc)) from exc


if __name__ == "__main__":
    raise SystemExit(main())
