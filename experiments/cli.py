"""The ``tfda`` command: ``tfda <command> [args...]`` runs one experiment module.

Each command is a module with ``main(argv: list[str] | None = None) -> int``; the
table below is the small registry the command line needs.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "lee": ("experiments.hurricane_lee", "Hurricane Lee study (analogue by default)"),
    "demo": ("experiments.sample_demo", "training-free sampling demo on a 2-D mixture"),
    "cycle": ("experiments.cycle", "assimilation cycle from a TOML config"),
    "l96": ("experiments.l96_twin", "Lorenz-96 twin experiments (EnSF vs LETKF)"),
    "era5": ("experiments.era5_cli", "ERA5 download / prepare through cdsapi"),
    "parareal": ("experiments.parareal_speedup", "Parareal speed-up table"),
    "scaling": ("experiments.scaling", "strong/weak scaling of the sharded score"),
    "bench-score": ("experiments.bench_score", "score estimator benchmark"),
    "bench-models": ("experiments.bench_models", "forecast-model timing benchmark"),
    "plot-tracks": ("experiments.plot_tracks", "track-uncertainty figure of a Lee run directory"),
}


def _usage() -> str:
    lines = ["usage: tfda <command> [args...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tfda: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
