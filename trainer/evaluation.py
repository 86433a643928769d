"""Evaluation on the fixed validation sets: every example counted once, the same masks each time.

A mixture has a validation set per source: each is evaluated on its own and
their results merged with the training weights (mixtures.weighted_total).
"""

import jax
from jax.experimental import multihost_utils
import numpy as np

from pipeline.errors import InputError
from trainer import console, feed as feed_lib, mixtures


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


def report(step, results, baseline, eval_sets):
    """The console lines of an evaluation: the total, then each source of a mixture."""
    console.show(f"eval at step {step}: loss {results['loss']:.4f}, accuracy "
                 f"{results['accuracy']:.4f} (most frequent token: {baseline:.4f}), "
                 f"perplexity {results['perplexity']:.2f}")
    for part, _, _ in eval_sets:
        if part.name is None:
            break
        console.show(f"  source {part.name} (weight {part.weight:.3f}): loss "
                     f"{results[part.name + '/loss']:.4f}, accuracy "
                     f"{results[part.name + '/accuracy']:.4f}")


def final_results(results, baseline, step, eval_sets):
    """What eval_results.json holds: the results under their eval_ names, the step, the baseline.

    A source's results keep their TensorBoard names: eval/<source>/loss.
    """
    named = {f"eval/{k}" if "/" in k else f"eval_{k}": v for k, v in results.items()}
    named.update(perplexity=named.pop("eval_perplexity"), step=step,
                 most_frequent_token_accuracy=baseline)
    if eval_sets[0][0].name is not None:
        named["eval_weights"] = {part.name: part.weight for part, _, _ in eval_sets}
    return named
