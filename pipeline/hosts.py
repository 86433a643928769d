"""How the work is split between hosts (not jax.sharding): each host's share and its order.

Hosts read disjoint shares whose union is all the data, each in an order
that is a stateless function of (seed, epoch), the same on every host, so
no host needs to talk to another. Every op here runs once per batch, block
or file (never once per line); see DESIGN.md "Batch first, never per line".
"""

import tensorflow as tf


def host_files(files, process_index, process_count):
    """This host's files, and whether elements must still be sharded (fewer files than hosts)."""
    if len(files) >= process_count:
        return files[process_index::process_count], False
    return files, True


def permuted(indices, n, seed, epoch):
    """indices (int64 in [0, n)) through a permutation of range(n) seeded by (seed, epoch).

    Stateless: the same on every host, and the iterator state stays a position.
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return indices.map(
        lambda i: tf.random.experimental.index_shuffle(i, seed=key, max_index=n - 1))


def shard_batches(ds, process_index, process_count):
    """Keep every process_count-th batch: hosts disjoint, union complete, each batch read once."""
    return ds.shard(process_count, process_index) if process_count > 1 else ds
