"""What the input pipeline needs to know, independent of how it was asked for.

The trainer fills it from its command-line dataclasses; the preview and the
benchmark fill it from their own flags.
"""

import dataclasses
from typing import Optional

# Chosen by measurement (README "Data", "Order of the lines"): order quality against reading
# speed, memory, and the size of a saved iterator, which holds the blocks in flight.
BLOCK_BYTES = 1 << 20
BLOCKS_MIXED = 16
INVALID_UTF8 = ("error", "replace")  # what to do with lines that are not valid UTF-8
SIZES_FROM = ("bytes", "lines")  # where a mixture's sizes (for weights by size) come from


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Sources, tokenization, packing and masking settings (run_mlm_flax.py names)."""

    # Sources.
    train_file: Optional[str] = None  # path, comma-separated list or glob; local or gs://
    validation_file: Optional[str] = None
    dataset_name: Optional[str] = None  # "tfds:NAME[/CONFIG]", an HF dataset dir or hub name
    dataset_config_name: Optional[str] = None
    train_ref_file: Optional[str] = None  # Chinese whole-word reference (run_chinese_ref.py)
    validation_ref_file: Optional[str] = None
    # Several named sources instead of train_file/dataset_name (pipeline/mixture_spec.py).
    train_mixture: Optional[str] = None  # "name=SPEC[:weight],..." or a JSON list of objects
    validation_mixture: Optional[str] = None  # the same form: one validation set per source
    mixture_temperature: Optional[float] = None  # unweighted sources drawn ~ size^(1/T)
    mixture_sizes_from: str = "bytes"  # or "lines" (a counting pass)
    validation_split_percentage: int = 5  # held out of the training stream when no validation source
    text_column: str = "text"
    invalid_utf8: str = "error"  # "error": fail naming file and line; "replace": U+FFFD
    shuffle_buffer_size: int = 10_000  # lines in the training stream's last, bounded shuffle
    # Uncompressed text and JSON lines are read as blocks in a random order each epoch.
    read_block_bytes: int = BLOCK_BYTES
    blocks_mixed: int = BLOCKS_MIXED  # blocks whose lines are permuted together

    # Tokenize and pack.
    max_seq_length: int = 128
    line_by_line: bool = False  # one example per line (truncate and pad) instead of packing
    chinese_word_segmentation: Optional[str] = None  # "jieba": segment on the fly, no ref file

    # Masking.
    mlm_probability: float = 0.15
    max_predictions_per_seq: int = 20
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_masking: bool = False

    # Evaluation.
    max_eval_samples: Optional[int] = None

    seed: int = 0
