"""Starting or resuming a run in its output_dir: claim it, restore its latest checkpoint.

Nothing is written to output_dir before this point; when resuming, it is
claimed only once its checkpoint has been read, so a checkpoint of another
model shape fails leaving the directory as it was.
"""

import math
import types

import jax
import numpy as np

from trainer import checkpoints, console, run_dir, schedules


def open_checkpoints(training_args):
    """The run's checkpoints (Orbax's manager), opened before anything else is written."""
    return checkpoints.Checkpoints(training_args.output_dir,
                                   save_total_limit=training_args.save_total_limit)


def restore_or_claim(training_args, run_args, *, ckpt, training, feed, state, train_data,
                     learning_rate_fn):
    """(checkpoints, state, start step): the latest checkpoint's when resuming, else `state`, 0.

    `ckpt` is the resumed run's open_checkpoints, None for a new run. `state`
    is the new run's, or the shapes a checkpoint is restored into.
    `train_data` is repositioned in place to the restored step (None: an
    evaluation-only run). Each argument changed since the earlier run is listed.
    """
    output_dir = training_args.output_dir

    def claim():
        run_dir.claim_output_dir(output_dir, overwrite=training_args.overwrite_output_dir,
                                 run_args=run_args)

    if ckpt is None:
        claim()
        return open_checkpoints(training_args), state, 0
    start_step = 0
    earlier_args = run_dir.check_resumed_arguments(
        output_dir, run_args, restoring=ckpt.latest_step is not None, training=training)
    if ckpt.latest_step is not None:
        start_step = ckpt.latest_step
        # Laid out as the step's output: no second compile.
        state = feed.place_state(ckpt.restore(feed.restore_target(state), train_data, start_step))
        console.show(f"Resuming from the checkpoint of step {start_step} in {ckpt.directory}")
        if earlier_args and training and jax.process_index() == 0:
            report_learning_rate_change(earlier_args, learning_rate_fn, start_step)
    claim()
    return ckpt, state, start_step


def report_learning_rate_change(earlier_args, learning_rate_fn, step):
    """Shows the learning rate's jump at the resumed step, if changed arguments cause one.

    The resumed run follows the schedule of its own arguments: a changed
    max_steps stretches it (with linear decay, a finished run given more
    steps goes on at a higher rate than it ended with), which is what a user
    extending a run wants, but must not be silent.
    """
    if earlier_args.get("max_steps", 0) <= 0:  # its length was counted from the data, not saved
        return
    earlier = schedules.build_schedule(types.SimpleNamespace(**earlier_args),
                                       earlier_args["max_steps"], xp=np)
    before, after = float(earlier(step)), float(learning_rate_fn(step))
    if not math.isclose(before, after, rel_tol=1e-6):
        console.show(f"changed: the learning rate at step {step}: {before:.3g} -> {after:.3g} "
                     "(the schedule follows the changed arguments)")


def checkpoint_text(ckpt):
    """The checkpoint a rerun resumes from, for messages."""
    step = ckpt.latest_step
    return "no checkpoint yet" if step is None else f"the checkpoint of step {step}"
