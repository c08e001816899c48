"""Peak memory of one FourCastNet AFNO forward: ``python -m tfda.experiments.bench_afno_memory``.

Runs the network of :mod:`models.fourcastnet` with random weights, no grad, on
``--members`` inputs and prints the peak extra memory the forward needs beyond
the weights and the input:

* on CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` after a reset;
* on CPU: the process's resident-set high-water mark (Linux ``VmHWM``), reset
  through ``/proc/self/clear_refs`` just before the forward, minus the resident
  set at that moment. glibc may keep freed pages, so this is an upper bound.

``--img H W`` picks a reduced grid (the full one is 720 x 1440); the other sizes
are the published ones (embed 768, 12 blocks, 8 filter blocks, patch 8) unless
``--embed``/``--depth`` are given. ``--micro-batch K`` runs the members K at a time.
"""

from __future__ import annotations

import argparse
import ctypes
import re

import torch

from tfda._io import timed
from tfda.models.fourcastnet import AFNOConfig, AFNONet


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(key + r":\s+(\d+)", fh.read()).group(1))


def _cpu_peak_extra(run) -> float:
    """GiB above the current resident set that ``run()`` reached (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident set
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) / 2**20


def measure(cfg: AFNOConfig, members: int, device: str, micro_batch: int | None
            ) -> tuple[float, float]:
    """(seconds, peak extra GiB) of one no-grad forward of ``members`` inputs."""
    torch.manual_seed(0)
    net = AFNONet(cfg).to(device).eval()
    net.micro_batch = micro_batch
    x = torch.randn(members, cfg.in_chans, *cfg.img_size, device=device)
    out: list[torch.Tensor] = []

    def run() -> None:
        with torch.no_grad():
            out.append(net(x))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if device.startswith("cuda"):
        run()  # warm-up: cuFFT plans and kernels
        out.clear()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _, seconds = timed(run)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak, seconds = timed(lambda: _cpu_peak_extra(run))
    if not bool(torch.isfinite(out[0]).all()):
        raise FloatingPointError("the forward produced non-finite values")
    return seconds, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_afno_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--img", type=int, nargs=2, default=(720, 1440), metavar=("H", "W"))
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--embed", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cfg = AFNOConfig(img_size=tuple(args.img), embed_dim=args.embed, depth=args.depth)
    except ValueError as exc:
        ap.error(str(exc))
    seconds, peak = measure(cfg, args.members, args.device, args.micro_batch)
    tokens = cfg.grid[0] * cfg.grid[1] * args.members
    act = tokens * cfg.embed_dim * 4 / 2**30
    print(f"AFNO img {cfg.img_size[0]}x{cfg.img_size[1]}, embed {cfg.embed_dim}, depth "
          f"{cfg.depth}, {args.members} member(s), micro-batch {args.micro_batch}, "
          f"{args.device}: {seconds:.2f} s, peak extra {peak:.3f} GiB "
          f"(one float32 token tensor: {act:.3f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
