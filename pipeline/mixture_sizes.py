"""The size of each mixture source, for weights by size (temperature sampling).

A size is a (number, unit) pair, or None where it cannot be known; weights by
size need one unit across the mixture (`mixture_spec.weights` refuses
otherwise and names each source's unit), because bytes and records do not
compare. What each kind of source is measured in:

| source                     | sizes_from="bytes" (default: no pass)  | sizes_from="lines" |
|----------------------------|----------------------------------------|--------------------|
| files                      | bytes stored (stat), "bytes"            | texts, counted     |
| .gz files                  | compressed bytes, "gzip bytes"         | texts, counted     |
| TFDS                       | its info's num_bytes (stored records)  | num_examples       |
| saved Hugging Face dataset | its text column's Arrow bytes          | num_rows           |
| streamed Hugging Face      | None (give the source a weight)        | None               |

The "lines" unit counts texts: lines with text, JSON lines, CSV rows,
TFRecord or TFDS examples, dataset rows; a counted file source is read once
through the pipeline's own reader (blank lines skipped, nothing held out).
Compressed bytes get a unit of their own: gzip shrinks text three to four
times, so they would understate a source beside plain files. TFDS's bytes
are its serialized examples, other features included: close to the text's
bytes for a dataset of long texts (each example adds a few tens of bytes).
"""

import dataclasses

import tensorflow as tf

from pipeline import formats, named_datasets, sources
from pipeline.config import SIZES_FROM
from pipeline.errors import InputError


def source_size(config, sizes_from="bytes"):
    """(size, unit) of the training data `config` reads (every host's share), or None.

    Call it once the source's dataset is built: building checks that the data
    exists and has its text column, with the pipeline's own messages.
    """
    if sizes_from not in SIZES_FROM:
        raise InputError(f"mixture_sizes_from: expected one of {', '.join(SIZES_FROM)}, "
                         f"got {sizes_from!r}")
    if config.dataset_name and config.dataset_name.startswith("tfds:"):
        return _tfds_size(config, sizes_from)
    if config.dataset_name:
        return _hf_size(config, sizes_from)
    if sizes_from == "lines":
        return _count_texts(config), "lines"
    return _stored_bytes(formats.resolve_files(config.train_file))


def _stored_bytes(files):
    units = {"gzip bytes" if formats.compression_of(f) else "bytes" for f in files}
    if len(units) > 1:
        raise InputError(f"{', '.join(files)}: compressed and plain files in one source have no "
                         "comparable size in bytes; use mixture_sizes_from lines")
    return sum(tf.io.gfile.stat(f).length for f in files), units.pop()


def _count_texts(config):
    """Texts in one pass of the pipeline's reader over every host's share, none held out."""
    whole = dataclasses.replace(config, validation_split_percentage=0, train_ref_file=None)
    batches = sources.line_batches(whole, "train")
    return int(batches.reduce(tf.constant(0, tf.int64),
                              lambda count, batch: count + tf.size(batch["text"],
                                                                   out_type=tf.int64)))


def _tfds_size(config, sizes_from):
    import tensorflow_datasets as tfds  # imported here, as in named_datasets: seconds of start-up

    name, data_dir = named_datasets.tfds_location(config)
    split = tfds.builder(name, data_dir=data_dir).info.splits["train"]
    if sizes_from == "bytes":
        return int(split.num_bytes), "bytes"
    return int(split.num_examples), "lines"


def _hf_size(config, sizes_from):
    import datasets

    data = named_datasets.load_hf(config)["train"]
    if not isinstance(data, datasets.Dataset):
        return None  # streamed: its length is unknown until read
    if sizes_from == "lines":
        return data.num_rows, "lines"
    return data.data.column(config.text_column).nbytes, "bytes"
