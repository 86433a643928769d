"""What the input pipeline needs to know: every data setting, defined and checked here only.

Each field carries its default, its help text and, in `DataConfig.__post_init__`,
its check, so a DataConfig that exists is a valid one however it was made:
train.py derives its data flags from these fields (trainer/args.py), and the
preview and the benchmarks fill it from their own flags. Field names and
defaults are run_mlm_flax.py's where it has them.
"""

import dataclasses
import math
from typing import Optional

from pipeline.errors import InputError

# Chosen by measurement (README "Data", "Order of the lines"): order quality against reading
# speed, memory, and the size of a saved iterator, which holds the blocks in flight.
BLOCK_BYTES = 1 << 20
BLOCKS_MIXED = 16
INVALID_UTF8 = ("error", "replace")  # what to do with lines that are not valid UTF-8
SIZES_FROM = ("bytes", "lines")  # where a mixture's sizes (for weights by size) come from
WORD_SEGMENTERS = ("jieba",)  # segment Chinese on the fly for whole-word masking
# The fields that name one source's data: a train_mixture's sources each give their own.
SOURCE_FIELDS = ("train_file", "dataset_name", "dataset_config_name", "train_ref_file",
                 "validation_file", "validation_ref_file")


def setting(default, help_text):
    """A settings dataclass field: its default and its command-line help, side by side."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Sources, reading order, tokenization, packing and masking settings."""

    # Sources: one (run_mlm_flax.py's flags) ...
    dataset_name: Optional[str] = setting(
        None, "'tfds:NAME[/CONFIG]', a saved Hugging Face dataset or a Hub name.")
    dataset_config_name: Optional[str] = setting(
        None, "The Hugging Face dataset's configuration.")
    train_file: Optional[str] = setting(
        None, "Training text: path, comma list or glob; local or gs://; "
              ".txt, .json(l), .csv, .tfrecord, .gz.")
    validation_file: Optional[str] = setting(
        None, "Validation text (same forms as train_file).")
    train_ref_file: Optional[str] = setting(
        None, "Chinese whole-word reference file for train_file.")
    validation_ref_file: Optional[str] = setting(
        None, "Chinese whole-word reference file for validation_file.")
    validation_split_percentage: int = setting(
        5, "Percent of the training lines held out for validation when no validation source "
           "is given.")
    # ... or several named ones (pipeline/mixture_spec.py).
    train_mixture: Optional[str] = setting(
        None, "Several named training sources instead of train_file/dataset_name: "
              "'name[column]=SPEC[:weight],...' (SPEC a file spec, tfds:NAME or hf:NAME), e.g. "
              "'wiki=data/wiki/*.txt:0.6,books=data/books.jsonl:0.4'; in a JSON config, a list "
              "of objects (README: Mixtures). Needs max_steps.")
    validation_mixture: Optional[str] = setting(
        None, "Named validation sources, in the form of train_mixture: each is evaluated on its "
              "own (eval/<name>/loss) and weighted into eval/loss. Default with a "
              "train_mixture: each source's validation_file or its held-out lines.")
    mixture_temperature: Optional[float] = setting(
        None, "Draw the train_mixture's unweighted sources in proportion to size^(1/T) (XLM-R: "
              "T=3.3); a weighted source keeps its weight as a fixed share.")
    mixture_sizes_from: str = setting(
        "bytes", "Sizes for weights by size: 'bytes' (file sizes, no pass over the data) or "
                 "'lines' (one counting pass over each source).")

    # Reading.
    text_column: str = setting(
        "text", "Column holding the text in json/csv/dataset sources.")
    invalid_utf8: str = setting(
        "error", "Lines of files that are not valid UTF-8: 'error' stops naming the file and "
                 "line, 'replace' replaces the invalid bytes with U+FFFD.")
    shuffle_buffer_size: int = setting(
        10_000, "Lines in the training stream's bounded shuffle buffer, the last stage of its "
                "order.")
    read_block_bytes: int = setting(
        BLOCK_BYTES, "Uncompressed text and JSON lines files are read as blocks of this many "
                     "bytes, in a fresh random order each epoch.")
    blocks_mixed: int = setting(
        BLOCKS_MIXED, "Blocks read together whose lines are shuffled together (memory: about "
                      "this many blocks).")

    # Tokenize and pack.
    max_seq_length: int = setting(
        128, "Tokens per example; every batch is padded to it (static shapes).")
    line_by_line: bool = setting(
        False, "One example per line (truncated and padded) instead of packing.")
    chinese_word_segmentation: Optional[str] = setting(
        None, "'jieba': segment Chinese on the fly for whole-word masking (instead of ref "
              "files).")

    # Masking.
    mlm_probability: float = setting(0.15, "Fraction of tokens to predict.")
    max_predictions_per_seq: Optional[int] = setting(
        None, "At most this many predicted tokens per example. Default: "
              "ceil(mlm_probability x max_seq_length), a full example's share (20 at 128, 77 "
              "at 512); a smaller value caps the rate (BERT pairs 128 with 20, 512 with 80).")
    mask_replace_prob: float = setting(
        0.8, "Of the predicted tokens, the fraction set to [MASK].")
    random_replace_prob: float = setting(
        0.1, "Of the predicted tokens, the fraction set to a random token.")
    whole_word_masking: bool = setting(
        False, "Mask whole words rather than single word pieces.")

    # Evaluation.
    max_eval_samples: Optional[int] = setting(
        None, "Evaluate on at most this many examples (of each validation source).")

    seed: int = setting(0, "Orders the data and draws the masks (train.py: the run's --seed).")

    def __post_init__(self):
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            check_fraction(name, getattr(self, name))
        check_positive("max_seq_length", self.max_seq_length)
        if self.max_predictions_per_seq is None:
            object.__setattr__(self, "max_predictions_per_seq",
                               max(1, math.ceil(round(self.full_example_share, 6))))
        for name in ("max_predictions_per_seq", "shuffle_buffer_size", "read_block_bytes",
                     "blocks_mixed"):
            check_positive(name, getattr(self, name))
        if self.max_eval_samples is not None:
            check_positive("max_eval_samples", self.max_eval_samples)
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise InputError(
                f"mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}")
        # 100 would leave nothing to train on: "percent of the training lines held out".
        if not 0 <= self.validation_split_percentage < 100:
            raise InputError(f"validation_split_percentage must be in [0, 100), got "
                             f"{self.validation_split_percentage}")
        if self.chinese_word_segmentation is not None:
            check_choice("chinese_word_segmentation", self.chinese_word_segmentation,
                         WORD_SEGMENTERS)
        check_choice("invalid_utf8", self.invalid_utf8, INVALID_UTF8)
        check_choice("mixture_sizes_from", self.mixture_sizes_from, SIZES_FROM)

    @property
    def full_example_share(self):
        """Predicted tokens mlm_probability asks for in an example of max_seq_length tokens."""
        return self.mlm_probability * self.max_seq_length

    def masking_cap_note(self):
        """One line when max_predictions_per_seq caps a full example below its share, else None.

        The budget of an example of n tokens is round(n x mlm_probability) (masking.py),
        so a full one's is round(full_example_share).
        """
        asked = max(1, round(self.full_example_share))
        if self.max_predictions_per_seq >= asked:
            return None
        return (f"max_predictions_per_seq {self.max_predictions_per_seq} caps a full "
                f"{self.max_seq_length}-token example at {self.max_predictions_per_seq} "
                f"predicted tokens ({self.max_predictions_per_seq / self.max_seq_length:.1%}), "
                f"not the {asked} ({self.mlm_probability * 100:g}%) that mlm_probability asks for; "
                f"leave it out for the full share")


# The checks of settings, here and of the trainer's own (trainer/args.py), in one wording.

def check_choice(name, value, choices):
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_positive(name, value):
    if value <= 0:
        raise InputError(f"{name} must be > 0, got {value}")


def check_fraction(name, value):
    if not 0 <= value <= 1:
        raise InputError(f"{name} must be in [0, 1], got {value}")
