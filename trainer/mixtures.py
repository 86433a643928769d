"""What the train loop does for a data mixture: each source's epochs, and the eval total.

The mixed training stream tags every example with its `source` and that
source's `epoch` (pipeline.mixture.TAGS). They are not model inputs: the
feed gets the batch without them, and `SourceEpochs` reads them to log each
source's epoch. Evaluation runs once per validation source; `weighted_total`
merges their results into the run's eval/loss and eval/accuracy.
"""

import math

from pipeline import mixture
from trainer import console


class SourceEpochs:
    """Each source's current epoch on this host, read off the training batches' tags.

    A source's epoch is that of its latest example trained on (this host's
    share of the source; each host reads its own). A run without a mixture
    has no sources and logs nothing.
    """

    def __init__(self, names, *, announce=True):
        self.names = list(names)
        self.epochs = {}
        self.announce = announce  # print a line when a source begins an epoch (process 0)

    def place(self, batch, place_batch):
        """(place_batch(the batch without its tags), the tags): the feed never sees the tags."""
        features = {key: value for key, value in batch.items() if key not in mixture.TAGS}
        tags = {key: batch[key] for key in mixture.TAGS if key in batch}
        return place_batch(features), tags

    def observe(self, tags, step):
        """Takes note of the tags of the batch that `step` trained on."""
        if not tags:
            return
        source, epoch = tags["source"], tags["epoch"]
        for index in set(source.tolist()):
            name = self.names[index]
            latest = int(epoch[source == index].max())
            if name in self.epochs and latest > self.epochs[name] and self.announce:
                console.show(f"step {step}: source {name} begins epoch {latest} (of this host's "
                             "share)")
            self.epochs[name] = max(latest, self.epochs.get(name, latest))

    def scalars(self):
        """{"<name>/epoch": epoch} for the sources seen so far: train/<name>/epoch."""
        return {f"{name}/epoch": float(epoch) for name, epoch in self.epochs.items()}


def weighted_total(per_source, weights):
    """One eval result from each source's: loss and accuracy averaged with `weights`.

    `per_source` maps a name to its results (loss, accuracy, perplexity,
    predicted_tokens); the total's perplexity is exp of the total loss, its
    predicted_tokens the sum. Returns the total and each source's results
    under "<name>/<metric>".
    """
    total = {key: sum(weights[name] * results[key] for name, results in per_source.items())
             for key in ("loss", "accuracy")}
    total["perplexity"] = math.exp(total["loss"])
    total["predicted_tokens"] = sum(r["predicted_tokens"] for r in per_source.values())
    for name, results in per_source.items():
        total.update({f"{name}/{key}": value for key, value in results.items()})
    return total
