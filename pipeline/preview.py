"""Shows what the model will see: the first examples of the pipeline, decoded.

Each predicted position is shown as `shown{original}` (for example
`[MASK]{parse}`, or `parse{parse}` where the token was kept), so a user can
check tokenization, packing and masking of their own data.

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
from pipeline import inputs, masking


def _add_config_flags(parser):
    """One flag per DataConfig field, typed from the field's annotation."""
    for field in dataclasses.fields(config_lib.DataConfig):
        kind = typing.get_args(field.type)[0] if typing.get_args(field.type) else field.type
        if kind is bool:
            parser.add_argument(f"--{field.name}", action="store_true")
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=field.default)


def _examples(config, tokenizer, split, count):
    """The first `count` examples (one batch) as numpy rows."""
    make = inputs.train_dataset if split == "train" else inputs.eval_dataset
    batch = next(iter(make(config, tokenizer, per_device_batch_size=count,
                           local_device_count=1)))
    return {key: value.numpy()[0] for key, value in batch.items()}


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
    batch = _examples(config, tokenizer, args.split, args.num_examples)
    for row in range(args.num_examples):
        real = batch["attention_mask"][row] == 1
        if not real.any():
            break  # weight-0 padding at the end of a short validation set
        ids = batch["input_ids"][row][real]
        labels = batch["labels"][row][real]
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        originals = tokenizer.convert_ids_to_tokens(np.where(labels >= 0, labels, ids).tolist())
        if args.json:
            print(json.dumps({"input_ids": ids.tolist(), "labels": labels.tolist(),
                              "tokens": tokens, "original_tokens": originals},
                             ensure_ascii=False))
        else:
            predicted = int((labels != masking.IGNORE_INDEX).sum())
            print(f"--- example {row}: {len(ids)} tokens, {predicted} predicted")
            print(_render(tokens, labels, originals))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
