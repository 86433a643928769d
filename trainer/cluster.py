"""The processes of a multi-host run: joining the JAX cluster, and agreeing before training."""

import os

import jax
from jax.experimental import multihost_utils
import numpy as np

from pipeline.errors import UserError


class OtherProcessFailed(UserError):
    """Another process of the cluster failed where all must agree; its own log says why."""


def initialize_distributed(training_args):
    """Joins the JAX cluster: explicit coordinator flags, or Cloud TPU's automatic discovery."""
    if training_args.coordinator_address:
        # CPU processes need a collectives backend for cross-process psums (GPUs and TPUs
        # ignore it); older JAX versions have none by default. A choice such as mpi is kept.
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=training_args.coordinator_address,
                                   num_processes=training_args.num_processes,
                                   process_id=training_args.process_id)
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host Cloud TPU slice
        jax.distributed.initialize()


def per_process(compute) -> np.ndarray:
    """compute()'s integer from every process, indexed by process.

    A process whose compute() fails (bad data in its shard, say) still joins
    the exchange before raising its error, and the others raise
    OtherProcessFailed: no process is left waiting for it at a collective.
    """
    error = None
    try:
        value = int(compute())
    except Exception as failure:  # re-raised below, once the other processes know
        error, value = failure, 0
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return np.array([value])
    gathered = multihost_utils.process_allgather(np.array([value, error is not None]))
    if error is not None:
        raise error
    failed = np.flatnonzero(gathered[:, 1])
    if failed.size:
        raise OtherProcessFailed(f"process {failed[0]} of {jax.process_count()} failed before "
                                 "training (its own log has the error); stopping too")
    return gathered[:, 0]
