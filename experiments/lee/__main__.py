"""``python -m tfda.experiments.lee`` = ``tfda lee`` (mpirun/srun/torchrun start it so)."""

from tfda.experiments.lee.cli import main

raise SystemExit(main())
