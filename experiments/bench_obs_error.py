"""The cost of the correlated observation-error model on a FourCastNet-size grid.

    python -m tfda.experiments.bench_obs_error [--lat 721 --lon 1440 --channels 20]
        [--length-km 200] [--repeats 2] [--device cpu]

Prints, for :class:`observations.synthetic.CorrelatedGridError` (R = D (C_lat kron
C_lon) D), the wall seconds of building it, of one ``precision_matvec`` (R^-1 r) and of
one ``sample`` per member (float32, best of ``--repeats``), and x^T R^-1 x / d of a
sample, which is 1 in expectation: a check that sample and precision agree.
"""

from __future__ import annotations

import numpy as np
import torch

from tfda._io import time_repeats, timed
from tfda.experiments._errors import ArgumentParser, command
from tfda.experiments.config import parse_device


@command("python -m tfda.experiments.bench_obs_error")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tfda.experiments.bench_obs_error",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--lat", type=int, default=721, help="latitudes, 90..-90 (default 721)")
    p.add_argument("--lon", type=int, default=1440, help="longitudes, global (default 1440)")
    p.add_argument("--channels", type=int, default=20, help="variables (default 20)")
    p.add_argument("--length-km", type=float, default=200.0, help="correlation length")
    p.add_argument("--repeats", type=int, default=2, help="best of this many (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    args = p.parse_args(argv)
    from tfda.observations.synthetic import CorrelatedGridError

    device = parse_device(args.device, "--device")
    lat, lon = np.linspace(90.0, -90.0, args.lat), np.arange(args.lon) * 360.0 / args.lon
    error, build = timed(lambda: CorrelatedGridError([1.0] * args.channels, args.length_km,
                                                     lat, lon))
    shape = (1, args.channels, args.lat, args.lon)
    gen = torch.Generator().manual_seed(0)
    x, sample = time_repeats(lambda: error.sample(shape, generator=gen, dtype=torch.float32),
                             args.repeats)
    x = x.to(device)
    px, matvec = time_repeats(lambda: error.precision_matvec(x), args.repeats, device=device)
    quad = float((x.double() * px.double()).sum() / x.numel())
    print(f"grid {args.lat} x {args.lon}, {args.channels} channels, L = {args.length_km:g} km, "
          f"float32, {torch.get_num_threads()} thread(s), {device}")
    print(f"{'build':>18} {build:8.2f} s")
    print(f"{'precision_matvec':>18} {min(matvec):8.2f} s per member")
    print(f"{'sample':>18} {min(sample):8.2f} s per member")
    print(f"{'x^T R^-1 x / d':>18} {quad:8.4f}   (1 in expectation)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
