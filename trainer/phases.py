"""A run that starts from another run's checkpoint (--init_checkpoint): BERT's second phase.

BERT is pretrained in two phases: most steps at sequence length 128, then a
short phase at 512 so that the position embeddings past 128 learn. Phase 2
is a new run, in its own output_dir, with its own data settings, batch,
devices, parallelism, steps and schedule. It takes phase 1's parameters and,
with --init_optimizer_state keep (the default, as NVIDIA's recipe does), its
optimizer's moments; with reset, a fresh optimizer (google-research/bert's
init_checkpoint restores the model's variables only). Its step, its schedule
and its data start at 0.

Its data order is its own: the seed that orders the data and draws the masks
is the run's --seed folded with the step it started from, so a phase 2 that
reads phase 1's corpus does not replay phase 1's first examples in phase 1's
order. The run records where it started (run_args.json's `started_from`), and
a rerun that resumes phase 2 from its own checkpoints takes the seed from
there, not from --init_checkpoint, which it no longer reads.
"""

import dataclasses
import hashlib
import types
from typing import Optional

from etils import epath
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from pipeline.errors import UserError
from trainer import checkpoints, console, feed as feed_lib, optimizers, run_dir


@dataclasses.dataclass(frozen=True)
class InitCheckpoint:
    """Another run's checkpoint that a new run starts from."""
    output_dir: epath.Path  # the run that wrote it
    step: int
    run_args: dict  # that run's arguments (its run_args.json)

    @property
    def path(self) -> str:
        return str(self.output_dir / run_dir.CHECKPOINT_DIR / str(self.step))

    def started_from(self) -> dict:
        """What run_args.json records of it."""
        return {"checkpoint": self.path, "step": self.step}


def locate(path) -> InitCheckpoint:
    """The checkpoint --init_checkpoint names: a run's output_dir (its latest step) or one
    step's directory (OUTPUT_DIR/checkpoints/N), local or gs://. Reads only."""
    given = run_dir.absolute(path)
    if (given / run_dir.CHECKPOINT_DIR).is_dir():
        output_dir, step = given, None
    elif given.parent.name == run_dir.CHECKPOINT_DIR and given.name.isdigit():
        output_dir, step = given.parent.parent, int(given.name)
    else:
        found = "does not exist" if not given.exists() else "holds no checkpoints/ directory"
        raise UserError(f"init_checkpoint {path} {found}: expected a run's output_dir or one "
                        f"of its checkpoints ({run_dir.CHECKPOINT_DIR}/STEP)")
    complete = sorted(ocp.path.step.checkpoint_steps(output_dir / run_dir.CHECKPOINT_DIR))
    if not complete:
        raise UserError(f"init_checkpoint {path}: no complete checkpoint in "
                        f"{output_dir / run_dir.CHECKPOINT_DIR}")
    if step is None:
        step = complete[-1]
    elif step not in complete:
        raise UserError(f"init_checkpoint {path}: step {step} is not a complete checkpoint "
                        f"(complete: {', '.join(map(str, complete))})")
    run_args = run_dir.saved_run_args(output_dir)
    if run_args is None:
        raise UserError(f"init_checkpoint {path}: {output_dir} has no readable "
                        f"{run_dir.RUN_MARKER}, so it is not a run of this trainer")
    return InitCheckpoint(output_dir, step, run_args)


def plan(training_args, *, restoring: bool) -> Optional[InitCheckpoint]:
    """The checkpoint to start from: none when resuming from this run's own checkpoints."""
    if not training_args.init_checkpoint:
        return None
    if restoring:
        if jax.process_index() == 0:
            console.show(f"--init_checkpoint {training_args.init_checkpoint} is no longer used: "
                         "this run resumes from its own checkpoints")
        return None
    init = locate(training_args.init_checkpoint)
    earlier = init.run_args.get("optimizer")
    if training_args.init_optimizer_state == "keep" and earlier != training_args.optimizer:
        raise UserError(
            f"init_checkpoint {init.path} holds the state of optimizer {earlier}, this run uses "
            f"{training_args.optimizer}: pass --init_optimizer_state reset to start the "
            f"optimizer afresh, or --optimizer {earlier}")
    return init


def started_from(training_args, init: Optional[InitCheckpoint], *, restoring: bool):
    """Where this run started ({"checkpoint", "step"}), or None for a run from scratch.

    A resumed run reads it from its own run_args.json: the checkpoint it
    started from is not read again.
    """
    if init is not None:
        return init.started_from()
    if restoring:
        saved = run_dir.saved_run_args(training_args.output_dir) or {}
        return saved.get("started_from")
    return None


def data_seed(seed: int, start: Optional[dict]) -> int:
    """The seed of the data order and masks: --seed, folded with the step a phase started from."""
    if start is None:
        return seed
    digest = hashlib.sha256(f"{seed}/{start['step']}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # a non-negative int32


def initial_state(init: InitCheckpoint, *, params_shapes, tx, rng, feed, training_args):
    """The new run's state at step 0: the checkpoint's parameters and, with keep, its
    optimizer state; placed by the feed for its step.

    The checkpoint is read into the state of its own optimizer (built from its
    run's arguments), holding this run's parameter shapes: a model of other
    shapes is a CheckpointMismatchError naming the first difference.
    """
    keep = training_args.init_optimizer_state == "keep"
    earlier_tx = optimizers.create_optimizer(types.SimpleNamespace(**init.run_args),
                                             lambda count: 0.0)
    template = feed_lib.state_shapes(params_shapes, earlier_tx, rng)
    source = checkpoints.Checkpoints(init.output_dir, read_only=True)
    try:
        restored = source.restore(feed.restore_target(template), None, step=init.step)
    finally:
        source.close()
    if not keep:
        return feed.init_state(restored.params, tx, rng)
    fresh = feed_lib.state_shapes(params_shapes, tx, rng)
    if jax.tree.structure(restored.opt_state) != jax.tree.structure(fresh.opt_state):
        raise UserError(
            f"init_checkpoint {init.path}: its optimizer state does not fit this run's "
            f"optimizer settings (optimizer, max_grad_norm, weight_decay): keep them, or pass "
            f"--init_optimizer_state reset")
    return feed.place_state(restored.replace(
        step=np.zeros((), np.int32), opt_state=_restart_schedules(restored.opt_state),
        dropout_rng=np.asarray(rng)))


def _restart_schedules(opt_state):
    """The optimizer state with its schedules' step counts at 0: the learning rate follows
    the new run's schedule from its start, while the moments (and Adam's own count, for
    their bias correction) carry on."""
    def restart(node):
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=np.zeros(np.shape(node.count), np.int32))
        return node
    return jax.tree.map(restart, opt_state,
                        is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState))


def describe(init: InitCheckpoint, training_args) -> str:
    kept = ("parameters and optimizer state" if training_args.init_optimizer_state == "keep"
            else "parameters; a fresh optimizer state")
    return (f"Starting from the checkpoint of step {init.step} in "
            f"{init.output_dir / run_dir.CHECKPOINT_DIR} ({kept}); this run's step, schedule "
            f"and data start at 0")
