"""Process-group set-up under mpirun/mpiexec, srun or torchrun, and the rank grid.

:func:`init` reads the launcher from the environment (docs/design.md section 5):

* torchrun (and ``torch.multiprocessing`` workers that set its variables):
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
* MPI (mpirun/mpiexec of MPICH, Open MPI, Cray PMI): rank and size from mpi4py's
  COMM_WORLD, the local rank from a shared-memory split; rank 0 picks
  MASTER_ADDR/PORT and broadcasts them through MPI;
* Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, MASTER_ADDR from the
  environment or the first host of SLURM_JOB_NODELIST;
* none of these: one process; torch.distributed is not initialised and no MPI
  library is needed.

The backend is nccl on CUDA (RCCL on ROCm) and gloo on CPU; the device is
``cuda:(local_rank % device_count)``. The timeout bounds every collective and
point-to-point wait, so a dead rank makes the others fail with an error instead of
hanging.

:func:`make_grid` lays ranks out as ``rank = slice_index * shard_size + shard_index``
(Rafid et al., Fig. 1: n_c slice groups of g GPUs each): ``slice_group`` links the
n_slices ranks that hold the same shard of different slices (Parareal's chain),
``shard_group`` the shard_size ranks of one slice (the sharded score's all_reduce).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

LAUNCHERS = ("single", "mpi", "slurm", "torchrun")
# Variables that MPI launchers set in every rank's environment.
# The timeout given to init(): make_grid's groups get it too (new_group would otherwise
# fall back to torch's 30-minute default and a stalled rank would hang its peers).
_timeout: datetime.timedelta | None = None
_MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                "HYDI_CONTROL_FD", "PMI_RANK", "ALPS_APP_PE")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world, the backend and its device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    launcher: str  # "single" | "mpi" | "slurm" | "torchrun"


def detect_launcher(env: dict[str, str] | None = None) -> str:
    """The launcher that started this process, from its environment variables."""
    env = dict(os.environ) if env is None else env
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        return "torchrun"
    if any(k in env for k in _MPI_MARKERS):
        return "mpi"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
        return "slurm"
    return "single"


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``"nid[001-004,9],login1"`` -> ``"nid001"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None or not nodelist.strip():
        raise ValueError(f"SLURM_JOB_NODELIST {nodelist!r} names no host")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _int_env(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError) as err:
        raise RuntimeError(f"launcher variable {name} is missing or not an integer") from err


def _from_mpi() -> tuple[int, int, int, str, int]:
    from mpi4py import MPI  # only here: a single process needs no MPI library

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank = node.Get_rank()
    node.Free()
    addr_port = None
    if rank == 0:
        addr = os.environ.get("MASTER_ADDR") or socket.gethostname()
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        addr_port = (addr, port)
    addr, port = comm.bcast(addr_port, root=0)
    return rank, size, local_rank, addr, port


def _from_slurm() -> tuple[int, int, int, str, int]:
    rank, size = _int_env("SLURM_PROCID"), _int_env("SLURM_NTASKS")
    local_rank = int(os.environ.get("SLURM_LOCALID", "0"))
    addr = os.environ.get("MASTER_ADDR") or first_host(os.environ.get("SLURM_JOB_NODELIST", ""))
    # Every rank derives the same port from the job id without talking to the others.
    port = int(os.environ.get("MASTER_PORT") or 20000 + int(os.environ.get("SLURM_JOB_ID", "0"))
               % 20000)
    return rank, size, local_rank, addr, port


def _from_torchrun() -> tuple[int, int, int, str, int]:
    return (_int_env("RANK"), _int_env("WORLD_SIZE"), int(os.environ.get("LOCAL_RANK", "0")),
            os.environ["MASTER_ADDR"], int(os.environ.get("MASTER_PORT", "29500")))


def _pick_device(device: str | None, local_rank: int) -> torch.device:
    if device is not None:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init(
    *,
    backend: str | None = None,
    timeout: datetime.timedelta = datetime.timedelta(seconds=120),
    device: str | None = None,
    launcher: str | None = None,
) -> DistContext:
    """Initialise torch.distributed for whatever launched this process.

    Args:
        backend: "nccl", "gloo", ...; default nccl on a CUDA/ROCm device, else gloo.
        timeout: the longest any rank waits for another (collectives, send/recv,
            start-up) before raising.
        device: force a device ("cpu", "cuda:1"); default cuda:(local_rank % count) or cpu.
        launcher: override the detection ("single", "mpi", "slurm", "torchrun").

    Returns:
        The :class:`DistContext`. Called again after a successful init, it returns
        the same description without re-initialising.
    """
    if timeout.total_seconds() <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    launcher = launcher or detect_launcher()
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if launcher == "single":
        dev = _pick_device(device, 0)
        return DistContext(0, 1, 0, backend or ("nccl" if dev.type == "cuda" else "gloo"),
                           dev, "single")
    source = {"mpi": _from_mpi, "slurm": _from_slurm, "torchrun": _from_torchrun}[launcher]
    rank, size, local_rank, addr, port = source()
    if not 0 <= rank < size:
        raise RuntimeError(f"{launcher}: rank {rank} outside a world of size {size}")
    dev = _pick_device(device, local_rank)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    global _timeout
    _timeout = timeout
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=f"tcp://{addr}:{port}",
                                rank=rank, world_size=size, timeout=timeout)
    return DistContext(rank, size, local_rank, backend, dev, launcher)


def shutdown() -> None:
    """Tear down the default process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class RankGrid:
    """A rank's place in the n_slices x shard_size grid (rank = slice * shard_size + shard).

    The groups are None when torch.distributed is not initialised (one process).
    """

    n_slices: int
    shard_size: int
    slice_index: int
    shard_index: int
    slice_group: dist.ProcessGroup | None
    shard_group: dist.ProcessGroup | None
    slice_ranks: tuple[int, ...]  # global ranks of slice_group, by slice index
    shard_ranks: tuple[int, ...]  # global ranks of shard_group, by shard index

    @property
    def rank(self) -> int:
        return self.slice_index * self.shard_size + self.shard_index


def make_grid(
    *,
    shard_size: int,
    n_slices: int | None = None,
    state_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout: datetime.timedelta | None = None,
) -> RankGrid:
    """Build the rank grid and its groups; every rank must call it (collective).

    Every rank calls ``new_group`` for every group in the same order (slice groups
    by shard index, then shard groups by slice index), as torch.distributed requires.
    Rank and world size default to those of the default process group (0 and 1 when
    there is none). ``timeout`` bounds waits inside the new groups; default: the
    timeout given to :func:`init`.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must lie in [0, world_size = {world_size})")
    if world_size % shard_size:
        raise ValueError(
            f"world_size = {world_size} is not a multiple of shard_size = {shard_size}"
        )
    if n_slices is None:
        n_slices = world_size // shard_size
    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    if n_slices * shard_size != world_size:
        raise ValueError(
            f"n_slices * shard_size = {n_slices} * {shard_size} = {n_slices * shard_size} "
            f"differs from world_size = {world_size}: every rank needs one (slice, shard) cell"
        )
    if state_size is not None and shard_size > state_size:
        raise ValueError(
            f"shard_size = {shard_size} exceeds state_size = {state_size}: some shard "
            "would be empty"
        )
    slice_index, shard_index = divmod(rank, shard_size)
    slice_lists = [[i * shard_size + j for i in range(n_slices)] for j in range(shard_size)]
    shard_lists = [[i * shard_size + j for j in range(shard_size)] for i in range(n_slices)]
    slice_group = shard_group = None
    if initialised:
        for j, ranks in enumerate(slice_lists):
            group = dist.new_group(ranks, timeout=timeout or _timeout)
            if j == shard_index:
                slice_group = group
        for i, ranks in enumerate(shard_lists):
            group = dist.new_group(ranks, timeout=timeout or _timeout)
            if i == slice_index:
                shard_group = group
    return RankGrid(n_slices, shard_size, slice_index, shard_index, slice_group, shard_group,
                    tuple(slice_lists[shard_index]), tuple(shard_lists[slice_index]))


def shard_range(size: int, parts: int, index: int) -> slice:
    """Contiguous near-equal split of ``size`` features into ``parts``: the index-th piece.

    The first ``size % parts`` pieces hold one extra feature.
    """
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"index {index} must lie in [0, parts = {parts})")
    if size < parts:
        raise ValueError(f"cannot split {size} features into {parts} non-empty shards")
    base, extra = divmod(size, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))
