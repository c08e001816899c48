"""The ``tfda`` command: ``tfda <command> [args...]`` runs one experiment module.

Each command is a module with ``main(argv: list[str] | None = None) -> int`` wrapped
by experiments._errors.command (one stderr line and exit status 2 for bad input;
``--debug`` or ``TFDA_DEBUG=1`` shows tracebacks); the table below is the small
registry the command line needs.
"""

from __future__ import annotations

import importlib
import sys

from tfda.experiments._errors import DEBUG_FLAG, debug_requested, report

COMMANDS: dict[str, tuple[str, str]] = {
    "lee": ("tfda.experiments.lee.cli", "Hurricane Lee study (analogue by default)"),
    "demo": ("tfda.experiments.sample_demo", "training-free sampling demo on a 2-D mixture"),
    "cycle": ("tfda.experiments.cycle", "assimilation cycle from a TOML config"),
    "l96": ("tfda.experiments.l96_twin", "Lorenz-96 twin experiments (EnSF vs LETKF)"),
    "era5": ("tfda.experiments.era5_cli", "ERA5 download / prepare through cdsapi"),
    "parareal": ("tfda.experiments.parareal_speedup", "Parareal speed-up table"),
    "scaling": ("tfda.experiments.scaling", "strong/weak scaling of the sharded score"),
    "bench-score": ("tfda.experiments.bench_score", "score estimator benchmark"),
    "bench-models": ("tfda.experiments.bench_models", "forecast-model timing benchmark"),
    "bench-analysis": ("tfda.experiments.bench_analysis",
                       "one local analysis (kernel EnSF, LETKF) up to FourCastNet size"),
    "plot-tracks": ("tfda.experiments.plot_tracks", "the track figure of a Lee run directory"),
    "plot-ranks": ("tfda.experiments.plot_ranks", "rank histograms of saved l96 tables"),
}


def _usage() -> str:
    lines = ["usage: tfda <command> [args...] [--debug]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"{DEBUG_FLAG} (or TFDA_DEBUG=1) shows Python tracebacks instead of "
              "one-line errors"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    words = [a for a in argv if a != DEBUG_FLAG]
    if not words or words[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = words[0], words[1:]
    if name not in COMMANDS:
        print(f"tfda: error: unknown command {name!r} (one of {', '.join(COMMANDS)}; "
              "tfda --help lists them)", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main([*rest, *([DEBUG_FLAG] if debug else [])]) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tfda {name}: interrupted (a resumable run continues when the same "
              "command is run again)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - e.g. an optional dependency failing on import
        if debug:
            raise
        return report(f"tfda {name}", exc)


if __name__ == "__main__":
    raise SystemExit(main())
