"""Shows what the model will see: the first examples of the pipeline, decoded.

Each predicted position is shown as `shown{original}` (for example
`[MASK]{parse}`, or `parse{parse}` where the token was kept), so a user can
check tokenization, packing and masking of their own data. With a
train_mixture each example names its source and that source's epoch; the
validation split of a mixture shows the first examples of each source.

    python -m pipeline.preview --train_file F --tokenizer DIR [pipeline flags]
        [--num_examples N] [--split train|validation] [--json]
"""

import argparse
import dataclasses
import json
import sys
import typing

import numpy as np

from pipeline import config as config_lib
from pipeline import inputs, masking, mixture


def _add_config_flags(parser):
    """One flag per DataConfig field, typed from the field's annotation."""
    for field in dataclasses.fields(config_lib.DataConfig):
        kind = typing.get_args(field.type)[0] if typing.get_args(field.type) else field.type
        if kind is bool:
            parser.add_argument(f"--{field.name}", action="store_true")
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=field.default)


def _first(dataset):
    """The dataset's first batch as numpy rows."""
    return {key: value.numpy() for key, value in next(iter(dataset)).items()}


def _examples(config, tokenizer, split, count):
    """[(source name or None, epoch or None, its first `count` examples as numpy rows)]."""
    train_weights = None
    if config.train_mixture:
        config, train_weights = mixture.with_resolved_weights(config)
    if split == "train":
        batch = _first(inputs.train_dataset(config, tokenizer, per_device_batch_size=count,
                                            local_device_count=1))
        if not config.train_mixture:
            return [(None, None, batch)]
        names = list(train_weights)
        return [(names[batch["source"][row]], int(batch["epoch"][row]),
                 {key: value[row:row + 1] for key, value in batch.items()})
                for row in range(count)]
    return [(part.name, None, _first(inputs.eval_dataset(
        part.config, tokenizer, per_device_batch_size=count, local_device_count=1)))
            for part in mixture.validation_sets(config, train_weights)]


def _rows(parts):
    """(source, epoch, row of a batch) for each example of `parts`, padding left out."""
    for source, epoch, batch in parts:
        for row in range(len(batch["input_ids"])):
            if not (batch["attention_mask"][row] == 1).any():
                break  # weight-0 padding at the end of a short validation set
            yield source, epoch, {key: value[row] for key, value in batch.items()}


def _render(tokens, labels, originals):
    shown = []
    for token, label, original in zip(tokens, labels, originals):
        shown.append(f"{token}{{{original}}}" if label != masking.IGNORE_INDEX else token)
    return " ".join(shown)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="The model's tokenizer (dir or name).")
    parser.add_argument("--num_examples", type=int, default=4)
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    parser.add_argument("--json", action="store_true", help="One JSON object per example.")
    _add_config_flags(parser)
    args = parser.parse_args(argv)
    config = config_lib.DataConfig(**{f.name: getattr(args, f.name)
                                      for f in dataclasses.fields(config_lib.DataConfig)})
    tokenizer = inputs.load_tokenizer(args.tokenizer)
    parts = _examples(config, tokenizer, args.split, args.num_examples)
    for index, (source, epoch, example) in enumerate(_rows(parts)):
        real = example["attention_mask"] == 1
        ids = example["input_ids"][real]
        labels = example["labels"][real]
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        originals = tokenizer.convert_ids_to_tokens(np.where(labels >= 0, labels, ids).tolist())
        origin = {} if source is None else {"source": source}
        if epoch is not None:
            origin["epoch"] = epoch
        if args.json:
            print(json.dumps({**origin, "input_ids": ids.tolist(), "labels": labels.tolist(),
                              "tokens": tokens, "original_tokens": originals},
                             ensure_ascii=False))
        else:
            predicted = int((labels != masking.IGNORE_INDEX).sum())
            where = "".join(f", {key} {value}" for key, value in origin.items())
            print(f"--- example {index}{where}: {len(ids)} tokens, {predicted} predicted")
            print(_render(tokens, labels, originals))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
