"""Data-parallel runs on PyTorch's own engine: torchrun's environment, rank 0, the launcher.

Kitchen does not manage processes itself. ``torchrun --nproc-per-node N -m kitchen run
...`` (or ``distributed.nproc_per_node=N`` on ``kitchen run``, which calls the same
``torch.distributed.run`` launcher) starts N copies of the whole run. Every rank runs
the workflow; the local backend gives each rank its contiguous share of every batch and
sums gradients across ranks, so the optimizer step equals the one-process step.

Only rank 0 writes the run dir (config, run.json, metrics, events, checkpoint index,
final weights): the few write points ask :func:`is_rank0`. Reading the rank from
torchrun's environment variables keeps this module free of torch at import time.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from kitchen.errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_distributed() -> bool:
    """True inside a torchrun worker of a job with more than one process."""
    return world_size() > 1


def is_rank0() -> bool:
    """Whether this process writes the run's files (always true outside torchrun)."""
    return rank() == 0


def under_launcher() -> bool:
    """True inside a process started by torchrun / torch.distributed.run (any world size)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def ensure_process_group() -> Any:
    """Join the job's process group (gloo for CPU tensors, NCCL for CUDA ones); None when alone."""
    if not is_distributed():
        return None
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always ships it on Linux
        dist = None
    if dist is None or not dist.is_available():
        raise ConfigError(
            "This run was started with several processes (WORLD_SIZE > 1) but this torch build has no "
            "torch.distributed support. Install a torch build with distributed support, or run one process."
        )
    if not dist.is_initialized():
        import datetime

        import torch

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        # A rank that stalls in a collective fails after this long instead of hanging; a rank
        # that *dies* is handled faster by torchrun, which stops the others at once.
        timeout = datetime.timedelta(seconds=float(os.environ.get("KITCHEN_DIST_TIMEOUT_S", "600")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return dist


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run_dir with a timestamp in it)."""
    dist = ensure_process_group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist = ensure_process_group()
    if dist is not None:
        dist.barrier()


def check_world_size(batch_size: int, world: int, what: str = "batch_size") -> None:
    """Each rank takes an equal share of the global batch: the world size must divide it."""
    from kitchen.train.microbatch import divisible_sizes

    if world > 1 and batch_size % world:
        raise ConfigError(
            f"{what}={batch_size} cannot be split evenly over {world} processes: each rank takes an equal share "
            f"of the global batch. Use a world size that divides {batch_size} "
            f"(e.g. {', '.join(map(str, divisible_sizes(batch_size)))}), or a {what} divisible by {world}."
        )


def check_batch_split(spec: Any, world: int | None = None) -> None:
    """A workflow with a batch of rows (``BatchKeys``) needs a world size that divides it;
    ``world`` defaults to the one ``distributed.*`` asks for."""
    from kitchen.config.spec import BatchKeys

    if not isinstance(spec, BatchKeys):  # RL and distillation split groups, not a batch of rows
        return
    if world is None:
        d = spec.distributed
        world = d.nproc_per_node * (int(d.nnodes) if str(d.nnodes).isdigit() else 1)
    check_world_size(spec.batch_size, world)


def launch(nproc_per_node: int, argv: Sequence[str], *, nnodes: str = "1", rdzv_endpoint: str | None = None,
           rdzv_backend: str | None = None, node_rank: int | None = None, max_restarts: int = 0) -> int:
    """Start ``python -m kitchen <argv>`` on ``nproc_per_node`` processes through torch.distributed.run.

    Returns the job's exit code: 0 when every rank finished, else the failing rank's
    code (torchrun has already stopped the other ranks and printed the failure).
    """
    try:
        from torch.distributed import run as torch_run
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    except ImportError:
        raise ConfigError(
            "distributed.nproc_per_node needs torch.distributed, which this torch build lacks. "
            "Install a torch build with distributed support, or drop distributed.nproc_per_node."
        ) from None
    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}",
            "--monitor-interval=0.5"]
    if rdzv_endpoint:
        args.append(f"--rdzv-endpoint={rdzv_endpoint}")
    if rdzv_backend:
        args.append(f"--rdzv-backend={rdzv_backend}")
    if node_rank is not None:
        args.append(f"--node-rank={node_rank}")
    if nnodes == "1" and not rdzv_endpoint:
        args.append("--standalone")
    args += ["-m", "kitchen", *argv]
    try:
        torch_run.main(args)
    except ChildFailedError as exc:
        failures = exc.failures or {}
        codes = [f.exitcode for f in failures.values() if f.exitcode and f.exitcode > 0]
        print(f"kitchen: a rank failed; the job was stopped ({exc.get_first_failure()[1].message or 'see above'}).",
              file=sys.stderr)
        return codes[0] if codes else 1
    return 0


def join_run(spec: Any) -> Any:
    """As one rank of a job: join the process group, check the batch split, agree on the run dir.

    The run dir is rank 0's (a ``${now:...}`` default would otherwise differ per rank).
    """
    ensure_process_group()
    check_batch_split(spec, world_size())
    run_dir = broadcast_object(spec.run_dir)
    return spec.model_copy(update={"run_dir": run_dir}) if run_dir != spec.run_dir else spec


def launch_run(spec: Any, argv: Sequence[str] | None = None, *, pin_run_dir: bool = True) -> dict[str, Any]:
    """``kitchen run ... distributed.nproc_per_node=N`` (or ``kitchen resume`` of such a run,
    or one job of a sweep): re-run the same command on N ranks.

    Checks what can be checked before starting anything (exit 2), pins the run dir so
    every rank composes the same one (``kitchen resume DIR`` names it already), and
    returns the job's status and exit code for the CLI (what rank 0 recorded is in run.json:
    :meth:`kitchen.runs.rundir.RunDir.read_info`).
    """
    d = spec.distributed
    check_batch_split(spec)
    args = list(sys.argv[1:] if argv is None else argv)
    if pin_run_dir:
        args = [a for a in args if not a.startswith("run_dir=")] + [f"run_dir={spec.run_dir}"]
    code = launch(d.nproc_per_node, args, nnodes=d.nnodes, rdzv_endpoint=d.rdzv_endpoint,
                  rdzv_backend=d.rdzv_backend, node_rank=d.node_rank)
    from kitchen.telemetry.events import RunStatus

    status = {0: RunStatus.COMPLETED, 130: RunStatus.INTERRUPTED}.get(code, RunStatus.FAILED)
    return {"status": status, "run_dir": spec.run_dir, "exit_code": code}
