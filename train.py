"""Pretrain or fine-tune a BERT-style masked language model on streaming text.

    python train.py configs/demo.json --max_steps 100   # a JSON config, flags on top
    python train.py --model_type bert --tokenizer_name DIR --train_file 'data/*.txt' \
        --output_dir runs/x --max_steps 10000

A rerun with the same output_dir resumes from its latest checkpoint.

Read top to bottom: `train_and_evaluate` sets up (`set_up`: model, data,
train state, checkpoint), trains (`train`: the loop), evaluates
(`final_evaluation`) and exports (`export`). What the loop does after a step
(log, evaluate, save, stop) is decided in one place, `after_step`.
"""

import atexit
import faulthandler
import os
import sys

import pipeline  # noqa: F401  (first: it quiets TensorFlow's start-up before TensorFlow loads)
from trainer import args as args_lib  # (light: no TensorFlow, JAX or transformers)
from trainer import memory

if __name__ == "__main__":
    memory.limit_arenas()  # before TensorFlow's and XLA's threads start

# Run as a script, the command line is read before TensorFlow and JAX load (seconds), so
# that --help and a mistyped flag answer at once.
COMMAND_LINE = args_lib.parse_args() if __name__ == "__main__" else None

import collections  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
from typing import Any, NamedTuple, Optional  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import tensorflow as tf  # noqa: E402

import model  # noqa: E402
from model import configuration  # noqa: E402
from pipeline import errors, inputs, mixture  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from trainer import checkpoints, cluster, compilation_cache, compile_log, console  # noqa: E402
from trainer import data, evaluation, export as export_lib, feed as feed_lib  # noqa: E402
from trainer import hf_differences, mixtures  # noqa: E402
from trainer import monitoring, optimizers, phases, resume, run_dir, schedules  # noqa: E402
from trainer import stopping  # noqa: E402
from trainer import step as step_lib  # noqa: E402


# Steps dispatched but not finished. Without a bound, asynchronous dispatch lets the host
# run up to a logging step ahead: progress and ETA would measure dispatch, and a
# stop request would wait for the whole queue.
MAX_STEPS_IN_FLIGHT = 2


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """What set-up makes and the loop, the evaluation and the export use (all but the state)."""
    args: Any  # the TrainingArguments
    feed: Any  # feed_lib.PmapFeed or MeshFeed
    module: Any
    tokenizer: Any
    data_config: Any
    train_weights: Optional[dict]  # a training mixture's weights by source, else None
    train_data: Optional[feed_lib.DataIterator]  # None: an evaluation-only run
    eval_sets: list  # data.validation_data's [(part, batch count, batches)], or []
    total_steps: int
    start_step: int
    tokens_per_step: int
    p_train_step: Any
    p_eval_step: Any
    ckpt: checkpoints.Checkpoints
    monitor: monitoring.Monitor
    stop: stopping.StopRequest
    do_train: bool
    do_eval: bool
    is_chief: bool

    def close(self):
        self.stop.uninstall()
        self.monitor.close()
        self.ckpt.close()


def train_and_evaluate(model_args, data_args, training_args):
    """Trains (resuming from output_dir), evaluates, checkpoints, exports; returns eval results."""
    with compile_log.CompileLog() as compiles:
        run, state = set_up(model_args, data_args, training_args)
        try:
            state, step = train(run, state) if run.do_train else (state, run.start_step)
            eval_results = final_evaluation(run, state, step) if run.do_eval else {}
        finally:
            run.close()
    if run.is_chief:
        console.show(compiles.summary())
    export(run, state, eval_results)
    return eval_results


# Set-up.

def set_up(model_args, data_args, training_args):
    """(Run, train state): in the order that finds mistakes soonest, output_dir written last."""
    tf.config.set_visible_devices([], "GPU")  # tf.data feeds the host; the accelerators are JAX's
    cluster.initialize_distributed(training_args)
    monitoring.configure_console_logging()
    feed = feed_lib.create(training_args.parallelism, training_args.mesh_shape)
    do_train, do_eval = args_lib.run_modes(training_args)
    is_chief = jax.process_index() == 0
    hparams = args_lib.hparams(model_args, data_args, training_args)
    resuming = run_dir.check_output_dir(training_args.output_dir,
                                        overwrite=training_args.overwrite_output_dir)
    # Opened before the model is built: a checkpoint to restore means shapes are enough.
    ckpt = resume.open_checkpoints(training_args) if resuming else None
    restoring = ckpt is not None and ckpt.latest_step is not None
    init = phases.plan(training_args, restoring=restoring)  # another run's checkpoint, or None
    tokenizer = load_tokenizer(model_args)
    with jax.default_device(feed.build_device):
        module, params = create_model(model_args, data_args, tokenizer, training_args.seed,
                                      shapes_only=restoring or init is not None)
    started_from = phases.started_from(training_args, init, restoring=restoring)
    if started_from:
        hparams["started_from"] = started_from
    data_config, train_weights = data_settings(data_args, training_args, hparams, started_from)
    if is_chief:
        for note in (data_config.masking_cap_note(), hf_differences.announcement(
                data_config, training_args, do_train=do_train, do_eval=do_eval)):
            if note:
                console.show(note)
    train_batch = (args_lib.per_device_train_batch(training_args, jax.device_count())
                   * training_args.gradient_accumulation_steps)
    total_steps = (data.count_train_steps(data_config, tokenizer, training_args, train_batch)
                   if do_train else 0)
    train_data = (data.first_training_batch(data_config, tokenizer, train_batch)
                  if do_train else None)  # an evaluation-only run reads no training data
    eval_sets = data.validation_data(data_config, tokenizer, train_weights,
                                     training_args.per_device_eval_batch_size) if do_eval else []
    learning_rate_fn, state, p_train_step, p_eval_step = create_train_state(
        module, params, training_args, total_steps, feed, shapes_only=restoring, init=init)
    del params
    if is_chief:
        for note in (schedules.warmup_note(training_args, total_steps),
                     init and phases.describe(init, training_args)):
            if note:
                console.show(note)
    ckpt, state, start_step = resume.restore_or_claim(
        training_args, hparams, ckpt=ckpt, training=do_train, feed=feed, state=state,
        train_data=train_data, learning_rate_fn=learning_rate_fn)
    # From here on output_dir is ours: the compiled steps may be cached in it.
    compilation_cache.enable(compilation_cache.cache_dir(training_args.compilation_cache_dir,
                                                         training_args.output_dir))
    if is_chief:
        console.show(f"Devices: {feed.describe(state)}")
    tokens_per_step = train_batch * jax.device_count() * data_args.max_seq_length
    monitor = monitoring.Monitor(
        os.path.join(training_args.output_dir, run_dir.LOG_DIR), total_steps=total_steps,
        start_step=start_step, logging_steps=training_args.logging_steps,
        tokens_per_step=tokens_per_step, hparams=hparams,
        profile_steps=training_args.profile_steps)
    return Run(
        args=training_args, feed=feed, module=module, tokenizer=tokenizer,
        data_config=data_config, train_weights=train_weights, train_data=train_data,
        eval_sets=eval_sets, total_steps=total_steps, start_step=start_step,
        tokens_per_step=tokens_per_step, p_train_step=p_train_step, p_eval_step=p_eval_step,
        ckpt=ckpt, monitor=monitor,
        stop=stopping.StopRequest(sync_every=training_args.logging_steps),
        do_train=do_train, do_eval=do_eval, is_chief=is_chief), state


def load_tokenizer(model_args):
    """The run's tokenizer: --tokenizer_name, else the pretrained model's own."""
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    if not tokenizer_name:
        raise UserError("tokenizer_name is required when training from scratch "
                        "(no model_name_or_path)")
    return inputs.load_tokenizer(tokenizer_name)


def data_settings(data_args, training_args, hparams, started_from=None):
    """(the pipeline's settings, a training mixture's weights or None); the run records them.

    A run started from another's checkpoint orders its data by its own seed (phases.py).
    """
    data_config = args_lib.data_config(data_args, training_args)
    data_config = dataclasses.replace(
        data_config, seed=phases.data_seed(data_config.seed, started_from))
    if not data_config.train_mixture:
        return data_config, None
    data_config, train_weights = mixture.with_resolved_weights(data_config)  # sizes read once
    hparams["mixture_weights"] = train_weights
    return data_config, train_weights


# The model and its train state.

def create_model(model_args, data_args, tokenizer, seed, shapes_only=False):
    """(module, params): a checkpoint's, or a new model sized for the tokenizer.

    With shapes_only (a resumed run, whose values come from its own
    checkpoint), params are shapes and dtypes: nothing is read or initialised.
    """
    dtype = jnp.dtype(model_args.dtype)
    if model_args.model_name_or_path:
        module, params = model.from_pretrained(
            model_args.model_name_or_path, dtype=dtype,
            config_overrides=model_args.config_overrides, shapes_only=shapes_only)
    else:
        config = configuration.load_config(
            model_args.config_name or {"model_type": model_args.model_type or "bert"})
        configuration.apply_overrides(config, model_args.config_overrides)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        module, params = model.from_config(config, seed=seed, dtype=dtype,
                                           shapes_only=shapes_only)
    config = module.config
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's "
                        f"vocab_size is {config.vocab_size}")
    positions = config.max_position_embeddings - (2 if config.model_type != "bert" else 0)
    if data_args.max_seq_length > positions:
        raise UserError(f"max_seq_length {data_args.max_seq_length} is larger than the "
                        f"model's {positions} positions (max_position_embeddings)")
    return module, params


def create_train_state(module, params, training_args, total_steps, feed, shapes_only=False,
                       init=None):
    """(learning rate schedule, train state, train step, eval step), laid out by the feed.

    The steps are pmapped, or jitted over the feed's mesh. With shapes_only
    the state is its shapes, for a restore to fill: nothing is compiled for it.
    With `init` (phases.InitCheckpoint; params are then shapes) the state is
    read from that checkpoint, at step 0.
    """
    learning_rate_fn = schedules.schedule_from_args(training_args, total_steps)
    tx = optimizers.create_optimizer(training_args, learning_rate_fn)
    rng = jax.random.PRNGKey(training_args.seed)
    if init is not None:
        state = phases.initial_state(init, params_shapes=params, tx=tx, rng=rng, feed=feed,
                                     training_args=training_args)
    elif shapes_only:
        state = feed_lib.state_shapes(params, tx, rng)
    else:
        state = feed.init_state(params, tx, rng)
    options = step_lib.StepOptions.from_args(training_args)
    return (learning_rate_fn, state,
            feed.train_step(state, module.apply, tx, learning_rate_fn, options),
            feed.eval_step(state, module.apply, options))


# The loop.

def train(run, state):
    """Trains from run.start_step to run.total_steps; returns (the final state, its step).

    Raises stopping.Stopped once a stop request has been saved, and
    TrainingDiverged when a loss is not finite.
    """
    step = run.start_step
    window = []  # this logging window's per-step metrics, still on device
    in_flight = collections.deque()
    source_epochs = mixtures.SourceEpochs(run.train_weights or (), announce=run.is_chief)
    device_batches = run.train_data.to_device(
        functools.partial(source_epochs.place, place_batch=run.feed.place_batch))
    if step < run.total_steps:
        console.show(f"Training {run.total_steps - step} steps of {run.tokens_per_step} tokens "
                     f"on {jax.device_count()} devices ({run.feed.description})")
    while step < run.total_steps:
        batch, tags = next(device_batches)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, metrics = run.p_train_step(state, batch)
        window.append(metrics)
        in_flight.append(metrics)
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:
            jax.block_until_ready(in_flight.popleft())
        step += 1
        source_epochs.observe(tags, step)
        run.monitor.step_done(step)
        todo = after_step(run, step, stop_requested=run.stop.requested(step))
        if todo.log:
            log_window(run, window, step, source_epochs)
        if todo.evaluate and evaluate(run, state.params, step) is None:
            todo = after_step(run, step, stop_requested=True)  # cut short by a stop request
            log_window(run, window, step, source_epochs)
        if todo.save:
            with run.monitor.timed("checkpoint"):
                run.ckpt.save(step, run.feed.saveable(state), run.train_data, wait=todo.stop)
        if todo.stop:
            raise stopping.Stopped(
                run.stop.exit_code(), f"stopped by {run.stop.name} after step {step}; saved "
                f"{resume.checkpoint_text(run.ckpt)}. Rerun the same command to resume.")
    return state, step


class AfterStep(NamedTuple):
    log: bool  # write the window's train metrics (checking its losses first)
    evaluate: bool
    save: bool
    stop: bool  # after saving, waiting for the save to be committed


def after_step(run, step, *, stop_requested):
    """What the loop does once `step` is done: the one place that decides it.

    Saves every save_steps, at the last step, and on a stop request; logs
    every logging_steps and before every save (a diverged loss must not be
    saved). Evaluates every eval_steps before the last step (the final
    evaluation covers that one), but not on a stop request: a stop must save
    within the preemption's grace period (one that cuts an evaluation short
    saves and stops at once).
    """
    args = run.args
    save = step % args.save_steps == 0 or step == run.total_steps or stop_requested
    return AfterStep(
        log=step % args.logging_steps == 0 or save,
        evaluate=(run.do_eval and step % args.eval_steps == 0 and step < run.total_steps
                  and not stop_requested),
        save=save, stop=stop_requested)


def log_window(run, window, step, source_epochs):
    """Writes the window's train metrics after checking its losses, and empties the window."""
    if not window:
        return
    host = [run.feed.to_host(m) for m in window]
    losses = [float(m.loss.compute()) for m in host]
    summary = {k: float(v) for k, v in
               functools.reduce(lambda a, b: a.merge(b), host).compute().items()}
    summary.update(source_epochs.scalars())
    bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad and not run.args.skip_nonfinite_updates:
        raise TrainingDiverged(
            f"the training loss is {losses[bad[0]]} at step {step - len(losses) + bad[0] + 1}; "
            f"stopped, keeping {resume.checkpoint_text(run.ckpt)}")
    run.monitor.write_train(step, summary)
    window.clear()


# Evaluation and export.

def evaluate(run, params, step):
    """Evaluates and reports at `step`: (results, baseline), or None when a stop cut it short."""
    if run.is_chief:
        num_batches = sum(num_batches for _, num_batches, _ in run.eval_sets)
        console.show(f"Evaluating at step {step} ({num_batches} batches)")
    with run.monitor.timed("eval"):
        results, baseline = evaluation.evaluate_sets(
            run.p_eval_step, params, run.eval_sets, run.module.config.vocab_size, run.monitor,
            run.stop, run.feed)
    if results is None:
        return None
    run.monitor.write_eval(step, results)
    if run.is_chief:
        evaluation.report(step, results, baseline, run.eval_sets)
    return results, baseline


def final_evaluation(run, state, step):
    """The final evaluation's results, as eval_results.json holds them.

    A stop request during it raises stopping.Stopped, once the final
    checkpoint is committed.
    """
    evaluated = evaluate(run, state.params, step)
    if evaluated is None:
        run.ckpt.wait()  # the final checkpoint is committed before the message names it
        saved = f"; saved {resume.checkpoint_text(run.ckpt)}" if run.do_train else ""
        raise stopping.Stopped(
            run.stop.exit_code(), f"stopped by {run.stop.name} during the evaluation at step "
            f"{step}{saved}. Rerun the same command to evaluate"
            f"{' and export' if run.do_train else ''}.")
    return evaluation.final_results(*evaluated, step, run.eval_sets)


def export(run, state, eval_results):
    """Writes the results and the trained model (process 0), then shows where things are."""
    final_params = run.feed.to_host(state.params)
    if jax.process_count() > 1:  # every host's replica should match the one process 0 exports
        console.show(f"process {jax.process_index()}: final parameters fingerprint "
                     f"{checkpoints.fingerprint(final_params)}")
    if not run.is_chief:
        return
    export_lib.write_outputs(run.args.output_dir, eval_results,
                             (run.module, final_params, run.tokenizer) if run.do_train else None)
    logdir = run.monitor.logdir
    console.show(f"TensorBoard logs: {logdir}\n  open them with: tensorboard --logdir {logdir}")
    if run.args.fill_mask_samples:
        export_lib.show_fill_mask(
            run.module, final_params, run.tokenizer,
            mixture.validation_sets(run.data_config, run.train_weights)[0].config,
            run.args.fill_mask_samples)


def main(argv=None):
    """Runs train_and_evaluate on argv (default: the command line).

    A user's error (pipeline.errors.user_message) is one `error:` line and exit
    status 1; any other exception is a bug and keeps its traceback.
    """
    model_args, data_args, training_args = (
        COMMAND_LINE if argv is None and COMMAND_LINE else args_lib.parse_args(argv))
    try:
        train_and_evaluate(model_args, data_args, training_args)
    except stopping.Stopped as stopped:
        print(stopped.message, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except Exception as error:  # pylint: disable=broad-except  (a bug is raised again)
        message = errors.user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def exit_without_teardown(code):
    """Ends the process once the run is over, skipping the interpreter's teardown.

    By then everything is written and closed (logs, checkpoints, the export);
    unloading TensorFlow's and XLA's runtimes would add more than a second
    (measured: 1.2 s of a 14 s test run). The exit handlers still run: a
    multi-host run leaves its cluster as usual.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)  # pylint: disable=protected-access


def run_as_script(argv=None):
    """main() for a process of its own: crashes speak, and the exit skips the teardown."""
    # A native crash (XLA, TensorFlow, TensorStore, the profiler) prints every thread's Python
    # stack rather than ending the run without a word.
    faulthandler.enable()
    try:
        main(argv)
    except SystemExit as exiting:
        exit_without_teardown(exiting.code)
    exit_without_teardown(0)


if __name__ == "__main__":
    run_as_script()
