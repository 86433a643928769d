"""Pretrain or fine-tune a BERT-style masked language model on streaming text.

    python train.py configs/demo.json --max_steps 100   # a JSON config, flags on top
    python train.py --model_type bert --tokenizer_name DIR --train_file 'data/*.txt' \
        --output_dir runs/x --max_steps 10000

A rerun with the same output_dir resumes from its latest checkpoint.
"""

import sys

import pipeline  # noqa: F401  (first: it quiets TensorFlow's start-up before TensorFlow loads)
from trainer import args as args_lib  # (light: no TensorFlow, JAX or transformers)

# Run as a script, the command line is read before TensorFlow and JAX load (seconds), so
# that --help and a mistyped flag answer at once.
COMMAND_LINE = args_lib.parse_args() if __name__ == "__main__" else None

import collections  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import model  # noqa: E402
from model import configuration  # noqa: E402
from pipeline import errors, inputs, mixture, sources  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from trainer import checkpoints, compilation_cache, feed as feed_lib  # noqa: E402
from trainer import mixtures, monitoring, optimizers, run_dir, schedules, stopping  # noqa: E402
from trainer import step as step_lib  # noqa: E402


# Steps dispatched but not finished. Without a bound, asynchronous dispatch lets the host
# run up to a logging step ahead: progress and ETA would measure dispatch, and a
# stop request would wait for the whole queue.
MAX_STEPS_IN_FLIGHT = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OtherProcessFailed(RuntimeError):
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
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"vocab_size is {config.vocab_size}")
    positions = config.max_position_embeddings - (2 if config.model_type != "bert" else 0)
    if data_args.max_seq_length > positions:
        raise ValueError(f"max_seq_length {data_args.max_seq_length} is larger than the "
                         f"model's {positions} positions (max_position_embeddings)")
    return module, params


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


def count_train_steps(data_config, tokenizer, training_args, per_device_batch_size):
    """max_steps, or num_train_epochs times one epoch's batches (counted by one pass)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    print("max_steps is not set: counting one epoch of training batches "
          "(set --max_steps to skip this pass)", flush=True)

    def count():
        epoch = inputs.train_dataset(
            data_config, tokenizer, per_device_batch_size=per_device_batch_size,
            local_device_count=jax.local_device_count(), process_index=jax.process_index(),
            process_count=jax.process_count(), num_epochs=1)
        return epoch.reduce(np.int64(0), lambda count, _: count + 1)

    counts = per_process(count)
    own, batches = counts[jax.process_index()], counts.max()
    if jax.process_count() > 1:  # each host's shard, visible: a shorter one repeats early
        print(f"process {jax.process_index()} of {jax.process_count()}: {own} training "
              f"batches in one epoch of its shard (the longest shard: {batches})", flush=True)
    if batches == 0:
        raise InputError(f"{data_config.train_file or data_config.dataset_name}: not enough "
                         "training text for one batch")
    return max(1, math.ceil(training_args.num_train_epochs * batches))


def first_training_batch(make_train_data, data_config, host_batch):
    """Makes the training iterator and reads its first batch now, so that bad input fails early.

    Every process learns whether any process has no batch (or failed), so all
    stop together. Returns the iterator.
    """
    made = []

    def missing():
        made.append(make_train_data())
        try:
            made[0].peek()
        except StopIteration:
            return 1
        return 0

    if per_process(missing).max():
        raise InputError(
            f"{training_data_name(data_config)}: not enough training text "
            f"for one batch of {host_batch} sequences of {data_config.max_seq_length} tokens "
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
        where = (f"no line of {data_config.train_file or data_config.dataset_name} falls in the "
                 f"{data_config.validation_split_percentage}% held out for validation; set "
                 "validation_file or a larger validation_split_percentage")
    raise InputError(f"the validation set is empty: {where}")


def summarize(window, to_host):
    """Host values of a list of per-step TrainMetrics, merged, plus each step's loss."""
    host = [to_host(m) for m in window]
    losses = [float(m.loss.compute()) for m in host]
    merged = functools.reduce(lambda a, b: a.merge(b), host)
    return {k: float(v) for k, v in merged.compute().items()}, losses


def evaluate(p_eval_step, params, eval_data, num_batches, vocab_size, monitor, stop, feed):
    """Eval metrics over the whole fixed validation set, and the most-frequent-token accuracy.

    Returns (None, None) when `stop` is requested part way: a preemption
    notice must not wait for the rest of a long evaluation.
    """
    label_counts = np.zeros(vocab_size, np.int64)

    def host_batches():
        for batch in eval_data:
            batch = jax.tree.map(lambda t: t.numpy(), batch)
            predicted = batch["masked_weights"] > 0
            label_counts[:] += np.bincount(batch["masked_ids"][predicted], minlength=vocab_size)
            yield batch

    metrics = None
    with monitor.eval_bar(num_batches) as bar:
        batches = feed_lib.prefetch(host_batches(), feed.place_batch)
        for i, batch in enumerate(batches):
            batch_metrics = p_eval_step(params, batch)
            metrics = batch_metrics if metrics is None else metrics.merge(batch_metrics)
            bar.update(i + 1)
            if stop.requested(i + 1):  # every host has the same number of batches
                return None, None
    if metrics is None:
        raise InputError("the validation set is empty")
    if jax.process_count() > 1:  # the baseline counts every host's labels, as the metrics do
        label_counts = multihost_utils.process_allgather(label_counts).sum(axis=0)
    results = {k: float(v) for k, v in feed.to_host(metrics).compute().items()}
    return results, float(label_counts.max() / max(label_counts.sum(), 1))


def validation_data(data_config, tokenizer, train_weights, per_device_batch_size, host):
    """[(validation set, its batch count, its batches)]: one per source of a mixture, else one.

    Each set has the same number of batches on every host (the most any host
    needs; the others pad with weight-0 batches), so every example counts once.
    """
    prepared = []
    for part in mixture.validation_sets(data_config, train_weights):
        try:
            num_batches = int(per_process(lambda: inputs.count_eval_batches(
                part.config, tokenizer, per_device_batch_size=per_device_batch_size,
                **host)).max())
            check_validation_set(num_batches, part.config)
        except InputError as error:
            if part.name is None:
                raise
            raise InputError(f"validation source {part.name}: {error}") from error
        prepared.append((part, num_batches, inputs.eval_dataset(
            part.config, tokenizer, per_device_batch_size=per_device_batch_size,
            num_batches=num_batches, **host)))
    return prepared


def evaluate_sets(p_eval_step, params, eval_sets, vocab_size, monitor, stop, feed):
    """evaluate() over each validation set; a mixture's results per source and weighted.

    Returns (None, None) when a stop request cut an evaluation short.
    """
    per_source, baselines = {}, {}
    for part, num_batches, eval_data in eval_sets:
        results, baseline = evaluate(p_eval_step, params, eval_data, num_batches, vocab_size,
                                     monitor, stop, feed)
        if results is None:
            return None, None
        if part.name is None:
            return results, baseline
        per_source[part.name], baselines[part.name] = results, baseline
    weights = {part.name: part.weight for part, _, _ in eval_sets}
    return (mixtures.weighted_total(per_source, weights),
            sum(weights[name] * baseline for name, baseline in baselines.items()))


def train_and_evaluate(model_args, data_args, training_args):
    """Trains (resuming from output_dir), evaluates, checkpoints, exports; returns eval results."""
    tf.config.set_visible_devices([], "GPU")  # tf.data feeds the host; the accelerators are JAX's
    initialize_distributed(training_args)
    monitoring.configure_console_logging()
    feed = feed_lib.create(training_args.parallelism, training_args.mesh_shape)
    do_train = training_args.do_train or not training_args.do_eval
    do_eval = training_args.do_eval or not training_args.do_train
    is_chief = jax.process_index() == 0
    output_dir = training_args.output_dir
    hparams = args_lib.hparams(model_args, data_args, training_args)
    resume = run_dir.check_output_dir(output_dir, overwrite=training_args.overwrite_output_dir)

    # Tokenizer and model.
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    if not tokenizer_name:
        raise ValueError("tokenizer_name is required when training from scratch "
                         "(no model_name_or_path)")
    tokenizer = inputs.load_tokenizer(tokenizer_name)
    # Read before anything is written (resuming, output_dir is claimed only after the restore).
    ckpt = (checkpoints.Checkpoints(output_dir, save_total_limit=training_args.save_total_limit)
            if resume else None)
    restoring = ckpt is not None and ckpt.latest_step is not None
    with jax.default_device(feed.build_device):
        module, params = create_model(model_args, data_args, tokenizer, training_args.seed,
                                      shapes_only=restoring)

    # Data.
    data_config = args_lib.data_config(data_args, training_args)
    train_weights = None
    if data_config.train_mixture:  # sizes read once; the run records the weights
        data_config, train_weights = mixture.with_resolved_weights(data_config)
        hparams["mixture_weights"] = train_weights
    accumulation = training_args.gradient_accumulation_steps
    train_batch = args_lib.per_device_train_batch(training_args, jax.device_count()) * accumulation
    host = dict(local_device_count=jax.local_device_count(),
                process_index=jax.process_index(), process_count=jax.process_count())
    total_steps = (count_train_steps(data_config, tokenizer, training_args, train_batch)
                   if do_train else 0)

    def make_train_data():
        return feed_lib.DataIterator(inputs.train_dataset(
            data_config, tokenizer, per_device_batch_size=train_batch, **host))

    train_data = (first_training_batch(make_train_data, data_config,
                                       train_batch * jax.local_device_count())
                  if do_train else None)  # an evaluation-only run reads no training data
    if do_eval:
        eval_sets = validation_data(data_config, tokenizer, train_weights,
                                    training_args.per_device_eval_batch_size, host)
        num_eval_batches = sum(num_batches for _, num_batches, _ in eval_sets)

    # Optimizer, state, and the steps (pmapped, or jitted over the mesh).
    learning_rate_fn = schedules.schedule_from_args(training_args, max(total_steps, 1))
    tx = optimizers.create_optimizer(training_args, learning_rate_fn)
    rng = jax.random.PRNGKey(training_args.seed)
    # Restoring, the state is shapes until the checkpoint's values arrive: no compile for it.
    state = (feed_lib.state_shapes(params, tx, rng) if restoring
             else feed.init_state(params, tx, rng))
    del params
    options = step_lib.StepOptions.from_args(training_args)
    p_train_step = feed.train_step(state, module.apply, tx, learning_rate_fn, options)
    p_eval_step = feed.eval_step(state, module.apply, options)

    # Restore. Nothing is written to output_dir before this point; when resuming, it is
    # claimed only once its checkpoint has been read, so a checkpoint of another model shape
    # fails leaving the directory as it was.
    claim = functools.partial(run_dir.claim_output_dir, output_dir,
                              overwrite=training_args.overwrite_output_dir, run_args=hparams)
    if not resume:
        claim()
        ckpt = checkpoints.Checkpoints(output_dir,
                                       save_total_limit=training_args.save_total_limit)
    start_step = 0
    earlier_args = run_dir.check_resumed_arguments(
        output_dir, hparams, restoring=restoring, training=do_train) if resume else None
    if restoring:
        start_step = ckpt.latest_step
        # Laid out as the step's output: no second compile.
        state = feed.place_state(ckpt.restore(feed.restore_target(state), train_data, start_step))
        print(f"Resuming from the checkpoint of step {start_step} in {ckpt.directory}", flush=True)
        if earlier_args and do_train and is_chief:
            report_learning_rate_change(earlier_args, learning_rate_fn, start_step)
    if resume:
        claim()
    # From here on output_dir is ours: the compiled steps may be cached in it.
    compilation_cache.enable(
        compilation_cache.cache_dir(training_args.compilation_cache_dir, output_dir))
    if is_chief:
        print(f"Devices: {feed.describe(state)}", flush=True)

    logdir = os.path.join(output_dir, run_dir.LOG_DIR)
    tokens_per_step = train_batch * jax.device_count() * data_args.max_seq_length
    monitor = monitoring.Monitor(
        logdir, total_steps=total_steps, start_step=start_step,
        logging_steps=training_args.logging_steps, tokens_per_step=tokens_per_step,
        hparams=hparams, profile_steps=training_args.profile_steps)
    stop = stopping.StopRequest(sync_every=training_args.logging_steps)
    eval_results, baseline = {}, None

    def run_eval(at_step):
        """Evaluates and reports; False when a stop request cut the evaluation short."""
        nonlocal eval_results, baseline
        if is_chief:
            print(f"Evaluating at step {at_step} ({num_eval_batches} batches)", flush=True)
        with monitor.timed("eval"):
            results, baseline = evaluate_sets(p_eval_step, state.params, eval_sets,
                                              module.config.vocab_size, monitor, stop, feed)
        if results is None:
            return False
        eval_results = results
        monitor.write_eval(at_step, eval_results)
        if is_chief:
            print(f"eval at step {at_step}: loss {eval_results['loss']:.4f}, accuracy "
                  f"{eval_results['accuracy']:.4f} (most frequent token: {baseline:.4f}), "
                  f"perplexity {eval_results['perplexity']:.2f}", flush=True)
            for part, _, _ in eval_sets:
                if part.name is None:
                    break
                print(f"  source {part.name} (weight {part.weight:.3f}): loss "
                      f"{eval_results[part.name + '/loss']:.4f}, accuracy "
                      f"{eval_results[part.name + '/accuracy']:.4f}", flush=True)
        return True

    def log_window(window, at_step):
        """Writes the window's train metrics, after checking its losses; returns a new window."""
        if not window:
            return window
        summary, losses = summarize(window, feed.to_host)
        summary.update(source_epochs.scalars())
        bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
        if bad and not training_args.skip_nonfinite_updates:
            raise TrainingDiverged(
                f"the training loss is {losses[bad[0]]} at step "
                f"{at_step - len(losses) + bad[0] + 1}; stopped, keeping "
                f"{_checkpoint_text(ckpt)}")
        monitor.write_train(at_step, summary)
        return []

    # The loop.
    step = start_step
    window = []  # this logging window's per-step metrics, still on device
    in_flight = collections.deque()
    source_epochs = mixtures.SourceEpochs(train_weights or (), announce=is_chief)
    device_batches = train_data.to_device(
        functools.partial(source_epochs.place, place_batch=feed.place_batch)) if do_train else None
    if do_train and start_step < total_steps:
        print(f"Training {total_steps - start_step} steps of {tokens_per_step} tokens on "
              f"{jax.device_count()} devices ({feed.description})", flush=True)
    try:
        while do_train and step < total_steps:
            batch, tags = next(device_batches)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = p_train_step(state, batch)
            window.append(metrics)
            in_flight.append(metrics)
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())
            step += 1
            source_epochs.observe(tags, step)
            monitor.step_done(step)
            stop_now = stop.requested(step)
            saving = step % training_args.save_steps == 0 or step == total_steps or stop_now
            if step % training_args.logging_steps == 0 or saving:  # also checks before a save
                window = log_window(window, step)
            if do_eval and step % training_args.eval_steps == 0 and step < total_steps and (
                    not stop_now):  # a stop must save within the grace period
                if not run_eval(step):
                    stop_now = saving = True
                    window = log_window(window, step)
            if saving:
                with monitor.timed("checkpoint"):
                    ckpt.save(step, feed.saveable(state), train_data, wait=stop_now)
            if stop_now:
                raise stopping.Stopped(
                    stop.exit_code(), f"stopped by {stop.name} after step {step}; saved "
                    f"{_checkpoint_text(ckpt)}. Rerun the same command to resume.")
        if do_eval and not run_eval(step):
            ckpt.wait()  # the final checkpoint is committed before the message names it
            saved = f"; saved {_checkpoint_text(ckpt)}" if do_train else ""
            raise stopping.Stopped(
                stop.exit_code(), f"stopped by {stop.name} during the evaluation at step "
                f"{step}{saved}. Rerun the same command to evaluate"
                f"{' and export' if do_train else ''}.")
    finally:
        stop.uninstall()
        monitor.close()
        ckpt.close()

    # The end: export.
    if do_eval:
        # A source's results keep their TensorBoard names: eval/<source>/loss.
        eval_results = {f"eval/{k}" if "/" in k else f"eval_{k}": v
                        for k, v in eval_results.items()}
        eval_results.update(perplexity=eval_results.pop("eval_perplexity"), step=step,
                            most_frequent_token_accuracy=baseline)
        if eval_sets[0][0].name is not None:
            eval_results["eval_weights"] = {part.name: part.weight for part, _, _ in eval_sets}
    final_params = feed.to_host(state.params)
    if jax.process_count() > 1:  # every host's replica should match the one process 0 exports
        print(f"process {jax.process_index()}: final parameters fingerprint "
              f"{checkpoints.fingerprint(final_params)}", flush=True)
    if is_chief:
        with run_dir.local_files(output_dir) as directory:
            if eval_results:
                with open(os.path.join(directory, "eval_results.json"), "w") as f:
                    json.dump(eval_results, f, indent=2)
            if do_train:
                model.save_pretrained(directory, module, final_params)
                tokenizer.save_pretrained(directory)
        if do_train:
            print(f"Exported the model and tokenizer (Hugging Face format) to {output_dir}")
        print(f"TensorBoard logs: {logdir}\n  open them with: tensorboard --logdir {logdir}")
        if training_args.fill_mask_samples:
            show_fill_mask(module, final_params, tokenizer,
                           mixture.validation_sets(data_config, train_weights)[0].config,
                           training_args.fill_mask_samples)
    return eval_results


def report_learning_rate_change(earlier_args, learning_rate_fn, step):
    """Prints the learning rate's jump at the resumed step, if changed arguments cause one.

    The resumed run follows the schedule of its own arguments: a changed
    max_steps stretches it (with linear decay, a finished run given more
    steps goes on at a higher rate than it ended with), which is what a user
    extending a run wants, but must not be silent.
    """
    if earlier_args.get("max_steps", 0) <= 0:  # its length was counted from the data, not saved
        return
    earlier = schedules.schedule_from_args(types.SimpleNamespace(**earlier_args),
                                           earlier_args["max_steps"])
    before, after = float(earlier(step)), float(learning_rate_fn(step))
    if not math.isclose(before, after, rel_tol=1e-6):
        print(f"changed: the learning rate at step {step}: {before:.3g} -> {after:.3g} (the "
              "schedule follows the changed arguments)", flush=True)


def _checkpoint_text(ckpt):
    step = ckpt.latest_step
    return "no checkpoint yet" if step is None else f"the checkpoint of step {step}"


def held_out_sentences(data_config, count, min_words=8, max_words=30):
    """The first `count` validation lines of a readable length (validation is never trained on)."""
    chosen = []
    for batch in sources.line_batches(data_config, "validation"):
        for line in batch["text"].numpy():
            text = line.decode("utf-8", "replace").strip()
            if min_words <= len(text.split()) <= max_words:
                chosen.append(text)
                if len(chosen) == count:
                    return chosen
    return chosen


def show_fill_mask(module, params, tokenizer, data_config, count, top_k=3):
    """Prints the model's guesses for one hidden word in each of a few held-out sentences."""
    print("Fill-mask predictions on held-out sentences:")
    for text in held_out_sentences(data_config, count):
        encoded = tokenizer(text, truncation=True, max_length=data_config.max_seq_length)
        ids = np.array(encoded["input_ids"])
        words = [i for i in range(1, len(ids) - 1)
                 if tokenizer.convert_ids_to_tokens(int(ids[i])).isalpha()
                 and not tokenizer.convert_ids_to_tokens(int(ids[i + 1])).startswith("##")]
        if not words:
            continue
        position = words[len(words) // 2]
        answer = tokenizer.convert_ids_to_tokens(int(ids[position]))
        ids[position] = tokenizer.mask_token_id
        logits = module.apply({"params": params}, ids[None], np.ones_like(ids)[None],
                              masked_positions=np.array([[position]]))
        guesses = tokenizer.convert_ids_to_tokens(
            np.argsort(-np.asarray(logits[0, 0]))[:top_k].tolist())
        print(f"  {tokenizer.decode(ids[1:-1])}\n    answer: {answer}; "
              f"model: {', '.join(guesses)}")


def main(argv=None):
    """Runs train_and_evaluate on argv (default: the command line); user errors are one line."""
    model_args, data_args, training_args = (
        COMMAND_LINE if argv is None and COMMAND_LINE else args_lib.parse_args(argv))
    try:
        train_and_evaluate(model_args, data_args, training_args)
    except (ValueError, TrainingDiverged, OtherProcessFailed) as error:  # InputError too
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        sys.exit(1)
    except tf.errors.OpError as error:  # raised inside tf.data: bad data deep in a file
        print(f"error: {errors.message_in(error.message)}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # the environment, not the code: a full disk at export, say
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except stopping.Stopped as stopped:
        print(stopped.message, file=sys.stderr)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    main()
