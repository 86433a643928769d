"""The device mesh of the jit path: its shape from `--mesh_shape`, and what is sharded how.

Two axes: "data" (pure data parallelism: every device of a row holds the same
parameters) and "fsdp" (each parameter and its optimizer state split over the
devices of the axis). The batch is split over both. A parameter is split
along its largest dimension that the fsdp size divides; one that no
dimension fits stays whole on every device. The rule depends on shapes only,
so an optimizer moment shaped like its parameter gets the parameter's
sharding, and a checkpoint restores onto any mesh by recomputing it.
"""

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.errors import UserError

AXES = ("data", "fsdp")
BATCH = PartitionSpec(AXES)  # the leading (example) dimension over both axes
_ENTRY = re.compile(r"\s*(\w+)\s*=\s*(-?\d+)\s*")


def parse_mesh_shape(text: str) -> dict:
    """'data=-1,fsdp=4' -> {'data': -1, 'fsdp': 4}.

    A data axis left out takes the rest of the devices (-1) unless another
    axis does; an fsdp axis left out has size 1.

    Raises UserError with the expected form for anything else.
    """
    sizes = {}
    for entry in text.split(","):
        found = _ENTRY.fullmatch(entry)
        if not found or found.group(1) not in AXES or found.group(1) in sizes:
            raise UserError(
                f"mesh_shape {text!r}: expected comma-separated AXIS=SIZE with the axes "
                f"{' and '.join(AXES)} at most once each and SIZE a positive integer or -1 "
                "(the rest of the devices), e.g. 'data=-1,fsdp=4'")
        sizes[found.group(1)] = int(found.group(2))
    if any(size == 0 or size < -1 for size in sizes.values()) or \
            list(sizes.values()).count(-1) > 1:
        raise UserError(f"mesh_shape {text!r}: each size must be a positive integer, and at "
                        "most one may be -1 (the rest of the devices)")
    sizes.setdefault("data", 1 if -1 in sizes.values() else -1)
    return {axis: sizes.get(axis, 1) for axis in AXES}


def resolve_mesh_shape(text: str, device_count: int) -> dict:
    """The mesh's axis sizes for device_count devices (-1 filled in); their product must fit."""
    sizes = parse_mesh_shape(text)
    known = math.prod(size for size in sizes.values() if size != -1)
    rest = [axis for axis, size in sizes.items() if size == -1]
    if rest and device_count % known == 0:
        sizes[rest[0]] = device_count // known
    if math.prod(sizes.values()) != device_count:
        raise UserError(
            f"mesh_shape {text!r} does not fit the {device_count} devices of this run: the "
            f"sizes must multiply to {device_count} (use -1 for one axis to take the rest, "
            "e.g. 'data=-1,fsdp=4')")
    return sizes


def create_mesh(sizes: dict, devices=None) -> Mesh:
    """A Mesh of the devices in process order, so each host's batch rows are contiguous."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices).reshape([sizes[axis] for axis in AXES]), AXES)


def fsdp_spec(shape, fsdp_size: int) -> PartitionSpec:
    """Split along the largest dimension fsdp_size divides (the first of equals); else whole."""
    if fsdp_size > 1:
        fits = [d for d, size in enumerate(shape) if size % fsdp_size == 0]
        if fits:
            axis = max(fits, key=lambda d: (shape[d], -d))
            return PartitionSpec(*(["fsdp" if d == axis else None for d in range(len(shape))]))
    return PartitionSpec()


def fsdp_shardings(tree, mesh: Mesh):
    """A NamedSharding by fsdp_spec for every array of tree (parameters, optimizer state)."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size)), tree)


def replicated_bytes(tree, mesh: Mesh) -> int:
    """Bytes of the non-scalar leaves that fsdp leaves whole on every device (0 without fsdp)."""
    if mesh.shape["fsdp"] == 1:
        return 0
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree)
               if x.shape and fsdp_spec(x.shape, mesh.shape["fsdp"]) == PartitionSpec())
