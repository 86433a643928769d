"""From host batches to device arrays, and where the train state lives: pmap or a mesh.

The pipeline yields host batches: dicts of numpy arrays [host_batch, width],
process p holding rows [p * host_batch, (p + 1) * host_batch) of the global
batch. A feed lays them out for its step, and with them the train state:

- `PmapFeed` (the default): [local_devices, per_device, width] arrays, and a
  full copy of the state on every device, for the pmapped steps.
- `MeshFeed`: global arrays on a Mesh of axes ("data", "fsdp")
  (`jax.make_array_from_process_local_data`), the batch split over both
  axes, parameters and optimizer state sharded over "fsdp"
  (trainer/mesh.py), for the jitted steps.

Both give the train loop the same interface, so it never asks which one it
has. `DataIterator` is the checkpointable source of host batches that both
read; the batches it has handed to a device but the loop has not yet used
are saved as host batches, so a checkpoint does not depend on the layout.
"""

import collections
import itertools

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainer import mesh as mesh_lib
from trainer import step as step_lib


class DataIterator:
    """Numpy host batches from a tf.data dataset whose exact position can be checkpointed.

    Iterate it through `to_device`: batches handed to the device prefetcher
    but not yet yielded to the loop stay in `pending` and are saved with the
    tf.data iterator state, so a restore replays them first.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self.iterator = iter(dataset)
        self.host_batch = tf.nest.flatten(dataset.element_spec)[0].shape[0]  # None: varies
        self.pending = collections.deque()  # fetched from tf.data, not yet trained on
        self.replay = collections.deque()  # restored pending batches, to serve first

    def __iter__(self):
        return self

    def __next__(self):
        if self.replay:
            batch = self.replay.popleft()
        else:
            batch = jax.tree.map(lambda t: t.numpy(), next(self.iterator))
        self.pending.append(batch)
        return batch

    def peek(self):
        """The next batch, which stays next: reads input early, so that bad data shows early."""
        batch = next(self)
        self.replay.appendleft(self.pending.pop())
        return batch

    def to_device(self, place, size: int = 2):
        """Yields place(batch), `size` batches ahead, each counted as consumed when yielded."""
        for batch in prefetch(self, place, size):
            self.pending.popleft()
            yield batch

    def unconsumed(self) -> list:
        """The batches the next train steps will see before the tf.data iterator's next one."""
        return list(self.pending) + list(self.replay)


def prefetch(host_batches, place, size: int = 2):
    """Yields place(batch) for each host batch, placing `size` batches ahead of the consumer.

    The transfers of the next batches overlap the step that runs meanwhile.
    """
    queue = collections.deque(place(batch) for batch in itertools.islice(host_batches, size))
    while queue:
        yield queue.popleft()
        queue.extend(place(batch) for batch in itertools.islice(host_batches, 1))


def create(parallelism: str, mesh_shape=None):
    """The feed for `--parallelism` (and `--mesh_shape`, default data=-1) on all devices."""
    if parallelism == "pmap":
        return PmapFeed()
    sizes = mesh_lib.resolve_mesh_shape(mesh_shape or "data=-1", jax.device_count())
    return MeshFeed(mesh_lib.create_mesh(sizes))


def state_shapes(params, tx, rng):
    """The fresh train state's shapes and dtypes, unplaced, computing nothing.

    What a resumed run restores into (a feed's restore_target): its values
    come from the checkpoint, so none is initialised or compiled for.
    """
    return jax.eval_shape(lambda p, r: step_lib.create_train_state(p, tx, r), params, rng)


def _identity(tree):
    return tree


_place_like_pmap_outputs = jax.pmap(_identity, axis_name=step_lib.AXIS)


def replicate(tree):
    """A copy of tree on every local device, placed exactly as the pmapped steps return it.

    flax.jax_utils.replicate places arrays differently from pmap outputs (since
    JAX 0.10, on a mesh with another axis name), which makes the step compile a
    second time at step 2. Use this for the initial and the restored state.
    """
    count = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (count,) + np.shape(x)),
                           jax.device_get(tree))
    return _place_like_pmap_outputs(stacked)


class PmapFeed:
    """Per-device batches and a full state replica on every device, for the pmapped steps."""

    description = "pmap"
    build_device = None  # the model is built where JAX puts arrays by default

    def __init__(self):
        devices = jax.local_devices()
        # The pmap axis name: arrays on a mesh of another name make the step compile twice.
        self._sharding = NamedSharding(Mesh(np.array(devices), (step_lib.AXIS,)),
                                       PartitionSpec(step_lib.AXIS))
        self._count = len(devices)

    def place_batch(self, host_batch):
        """[host_batch, ...] -> [local devices, per device, ...], one slice per device."""
        return jax.tree.map(lambda x: jax.device_put(
            x.reshape((self._count, -1) + x.shape[1:]), self._sharding), host_batch)

    def init_state(self, params, tx, rng):
        return replicate(step_lib.create_train_state(params, tx, rng))

    def place_state(self, state):
        """A host (or restored) state, replicated as the step returns it: no second compile."""
        return replicate(state)

    @staticmethod
    def to_host(tree):
        """One copy of a replicated pytree as numpy arrays.

        Reads this process's first shard, so it also works when the arrays span
        several processes; a shard keeps the device axis under some shardings.
        """
        def first(x):
            shard = np.asarray(x.addressable_data(0))
            return shard[0] if shard.ndim == x.ndim else shard
        return jax.tree.map(first, tree)

    def saveable(self, state):
        """What a checkpoint holds: one replica, on the host."""
        return self.to_host(state)

    @staticmethod
    def restore_target(shapes):
        """Host arrays of the unplaced state's shapes (state_shapes, or a host state): Orbax
        restores one replica as numpy (np.zeros allocates lazily)."""
        return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)

    def describe(self, state) -> str:
        return (f"pmap over {jax.device_count()} devices, each holding the whole train state "
                f"({_mib(bytes_on_device(state))} MiB)")

    def train_step(self, state, apply_fn, tx, learning_rate_fn, options):
        del state  # replicated whatever its shape
        return step_lib.make_p_train_step(apply_fn, tx, learning_rate_fn, options)

    def eval_step(self, state, apply_fn, options):
        del state
        return step_lib.make_p_eval_step(apply_fn, options)


class MeshFeed:
    """Global arrays on a data x fsdp mesh, parameters sharded, for the jitted steps."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        # The model is built in host memory and placed shard by shard (init_state): no
        # accelerator ever holds all of it.
        self.build_device = jax.local_devices(backend="cpu")[0]
        self.description = "mesh " + ",".join(f"{a}={n}" for a, n in mesh.shape.items())
        self._batch = NamedSharding(mesh, mesh_lib.BATCH)
        self._replicated = NamedSharding(mesh, PartitionSpec())

    def place_batch(self, host_batch):
        """This process's rows of the global batch, split over the mesh's devices."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self._batch, x), host_batch)

    def shardings(self, state):
        """Parameters and optimizer state by the fsdp rule; the step and the key replicated."""
        return state.replace(
            step=self._replicated, dropout_rng=self._replicated,
            params=mesh_lib.fsdp_shardings(state.params, self.mesh),
            opt_state=mesh_lib.fsdp_shardings(state.opt_state, self.mesh))

    def init_state(self, params, tx, rng):
        """The fresh state, each device computing only its shards of the optimizer state."""
        def create(params, rng):
            return step_lib.create_train_state(params, tx, rng)

        shardings = self.shardings(state_shapes(params, tx, rng))
        return jax.jit(create, out_shardings=shardings)(
            self._place(params, shardings.params), self._place(rng, self._replicated))

    def place_state(self, state):
        """A host (or restored) state laid out as the step returns it: no second compile."""
        return self._place(state, self.shardings(state))

    @staticmethod
    def _place(tree, shardings):
        """Host values onto shardings that may span processes (every process has the values)."""
        def put(x, sharding):
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return x
            value = np.asarray(jax.device_get(x))
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
        return jax.tree.map(put, tree, shardings)

    @staticmethod
    def to_host(tree):
        """The whole value of each (possibly sharded) array, as numpy, on every process.

        Gathers one array at a time, so no device ever holds more than one
        whole parameter beyond its shards. Every process must call it.
        """
        def gather(x):
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            if x.is_fully_addressable:
                return np.asarray(x)
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.tree.map(gather, tree)

    def saveable(self, state):
        """What a checkpoint holds: the sharded arrays themselves (each process writes its own)."""
        return state

    def restore_target(self, shapes):
        """The unplaced state's shapes (state_shapes, or a host state) with this mesh's
        shardings: Orbax reads each device's shards only."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, self.shardings(shapes))

    def describe(self, state) -> str:
        fsdp = self.mesh.shape["fsdp"]
        text = (f"{self.description}: {_mib(bytes_on_device(state))} MiB of train state per "
                "device")
        if fsdp > 1:
            whole = mesh_lib.replicated_bytes((state.params, state.opt_state), self.mesh)
            text += (f"; {whole} bytes of it on every device whole (parameters with no "
                     f"dimension divisible by fsdp={fsdp}, and their optimizer state)")
        return text

    def train_step(self, state, apply_fn, tx, learning_rate_fn, options):
        return step_lib.make_mesh_train_step(
            apply_fn, tx, learning_rate_fn, options, state_shardings=self.shardings(state),
            batch_sharding=self._batch, replicated=self._replicated)

    def eval_step(self, state, apply_fn, options):
        return step_lib.make_mesh_eval_step(
            apply_fn, options, param_shardings=self.shardings(state).params,
            batch_sharding=self._batch, replicated=self._replicated)


def bytes_on_device(tree, device=None) -> int:
    """Bytes that the arrays of tree hold on one device (default: this process's first)."""
    device = jax.local_devices()[0] if device is None else device
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
               for shard in x.addressable_shards if shard.device == device)


def _mib(count: int) -> str:
    return f"{count / 2 ** 20:.1f}"
