"""The run's data, as the trainer asks for it: how many steps, the first batch, the validation sets.

Every question here is answered by all processes together (cluster.per_process),
so that bad data in one host's shard stops every host at once, before training.
"""

import math

import jax
import numpy as np

from pipeline import inputs, mixture
from pipeline.errors import InputError
from trainer import console, feed as feed_lib
from trainer.cluster import per_process


def host_layout():
    """This process's place in the cluster, as the pipeline's datasets take it."""
    return dict(local_device_count=jax.local_device_count(),
                process_index=jax.process_index(), process_count=jax.process_count())


def count_train_steps(data_config, tokenizer, training_args, per_device_batch_size):
    """max_steps, or num_train_epochs times one epoch's batches (counted by one pass)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    console.show("max_steps is not set: counting one epoch of training batches "
                 "(set --max_steps to skip this pass)")

    def count():
        epoch = inputs.train_dataset(data_config, tokenizer,
                                     per_device_batch_size=per_device_batch_size,
                                     num_epochs=1, **host_layout())
        return epoch.reduce(np.int64(0), lambda count, _: count + 1)

    counts = per_process(count)
    own, batches = counts[jax.process_index()], counts.max()
    if jax.process_count() > 1:  # each host's shard, visible: a shorter one repeats early
        console.show(f"process {jax.process_index()} of {jax.process_count()}: {own} training "
                     f"batches in one epoch of its shard (the longest shard: {batches})")
    if batches == 0:
        raise InputError(f"{training_data_name(data_config)}: not enough training text for "
                         "one batch")
    return max(1, math.ceil(training_args.num_train_epochs * batches))


def first_training_batch(data_config, tokenizer, per_device_batch_size):
    """The training iterator, its first batch read now, so that bad input fails early.

    Every process learns whether any process has no batch (or failed), so all
    stop together.
    """
    made = []

    def missing():
        made.append(feed_lib.DataIterator(inputs.train_dataset(
            data_config, tokenizer, per_device_batch_size=per_device_batch_size,
            **host_layout())))
        try:
            made[0].peek()
        except StopIteration:
            return 1
        return 0

    if per_process(missing).max():
        raise InputError(
            f"{training_data_name(data_config)}: not enough training text for one batch of "
            f"{per_device_batch_size * jax.local_device_count()} sequences of "
            f"{data_config.max_seq_length} tokens "
            "(the data is empty, only blank lines, or all held out for validation)")
    return made[0]


def training_data_name(data_config):
    """What the training data is, for messages."""
    return data_config.train_file or data_config.dataset_name or "train_mixture"


def check_validation_set(num_batches, data_config):
    """An empty validation set is an error now, not after training (a small one is padded)."""
    if num_batches:
        return
    if data_config.validation_file:
        where = f"{data_config.validation_file} has no text"
    else:
        where = (f"no line of {training_data_name(data_config)} falls in the "
                 f"{data_config.validation_split_percentage}% held out for validation; set "
                 "validation_file or a larger validation_split_percentage")
    raise InputError(f"the validation set is empty: {where}")


def validation_data(data_config, tokenizer, train_weights, per_device_batch_size):
    """[(validation set, its batch count, its batches)]: one per source of a mixture, else one.

    Each set has the same number of batches on every host (the most any host
    needs; the others pad with weight-0 batches), so every example counts once.
    """
    prepared = []
    for part in mixture.validation_sets(data_config, train_weights):
        try:
            num_batches = int(per_process(lambda: inputs.count_eval_batches(
                part.config, tokenizer, per_device_batch_size=per_device_batch_size,
                **host_layout())).max())
            check_validation_set(num_batches, part.config)
        except InputError as error:
            if part.name is None:
                raise
            raise InputError(f"validation source {part.name}: {error}") from error
        prepared.append((part, num_batches, inputs.eval_dataset(
            part.config, tokenizer, per_device_batch_size=per_device_batch_size,
            num_batches=num_batches, **host_layout())))
    return prepared
