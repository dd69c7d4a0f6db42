"""Rank, world size and a shared run id from the launcher's environment (torchrun, SLURM, Open MPI,
MPICH/PMI). Ranks of one job must agree on the run id without talking to each other."""

from __future__ import annotations

from collections.abc import Mapping

from .environ import ENVIRON
from .values import sanitize_name

RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
WORLD_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _first_int(env: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        raw = env.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return None


def rank(env: Mapping[str, str] = ENVIRON) -> int:
    return _first_int(env, RANK_VARS) or 0


def world_size(env: Mapping[str, str] = ENVIRON) -> int:
    return _first_int(env, WORLD_VARS) or 1


def launcher_run_id(env: Mapping[str, str] = ENVIRON) -> str | None:
    """A run id every rank of the job computes alike, or None outside a multi-rank launch.
    RUNSTREAM_RUN_ID always wins; launcher ids are used only when the job has several ranks
    (a single-process SLURM job may run many runs one after another)."""
    explicit = env.get("RUNSTREAM_RUN_ID", "").strip()
    if explicit:
        return sanitize_name(explicit)
    if world_size(env) <= 1:
        return None
    torch_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if torch_id and torch_id != "none":  # torchrun's default rdzv id "none" is not unique
        return sanitize_name(f"torch-{torch_id}")
    slurm = env.get("SLURM_JOB_ID", "").strip()
    if slurm:
        step = env.get("SLURM_STEP_ID", "").strip()
        return sanitize_name(f"slurm-{slurm}" + (f".{step}" if step else ""))
    for name, prefix in (
        ("OMPI_MCA_ess_base_jobid", "mpi"),
        ("PMIX_NAMESPACE", "pmix"),
        ("PMI_KVSNAME", "pmi"),
    ):
        value = env.get(name, "").strip()
        if value:
            return sanitize_name(f"{prefix}-{value}")
    return None
