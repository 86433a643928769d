"""Command-line arguments: run_mlm_flax.py's three dataclasses, plus what this trainer adds.

Field names and defaults follow Hugging Face's run_mlm_flax.py so that its
commands and JSON files keep working; flags it accepts that mean nothing here
are still accepted and named in one warning line. Where run_mlm_flax.py would
crash on a missing value (max_seq_length, eval_steps) we pick a default.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Optional

# Light modules only (no TensorFlow, JAX or transformers): train.py reads its command line,
# and answers --help, before those load.
from model.configuration import SUPPORTED_MODEL_TYPES
from pipeline.config import INVALID_UTF8, SIZES_FROM, DataConfig
from pipeline.errors import UserError
from pipeline.mixture_spec import parse_mixture, parse_validation_mixture

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "lamb", "adafactor")
DTYPES = ("float32", "float16", "bfloat16")
WORD_SEGMENTERS = ("jieba",)
PARALLELISMS = ("pmap", "mesh")

# Accepted for compatibility with run_mlm_flax.py (and its Hub plumbing) but without effect:
# no Hub uploads, no datasets cache (the pipeline streams), always a fast tokenizer.
IGNORED_FIELDS = (
    "cache_dir", "use_fast_tokenizer", "token", "use_auth_token", "trust_remote_code",
    "overwrite_cache", "preprocessing_num_workers",
    "push_to_hub", "hub_model_id", "hub_token", "gradient_checkpointing",
)


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to start from (or to build from scratch)."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "A Hugging Face checkpoint directory to start from; unset to train "
                          "from scratch."})
    model_type: Optional[str] = field(
        default=None,
        metadata={"help": "From scratch (no model_name_or_path): "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}; default bert."})
    config_name: Optional[str] = field(
        default=None, metadata={"help": "A config.json (or its directory), if not the model's."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "A tokenizer directory, if not the model's."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Ignored here."})
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Ignored here: the fast tokenizer is always used."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Compute dtype of the model: float32, float16 or bfloat16."})
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Override config values, e.g. 'hidden_size=256,num_hidden_layers=4'."})
    token: Optional[str] = field(default=None, metadata={"help": "Ignored here (Hub token)."})
    use_auth_token: Optional[bool] = field(default=None, metadata={"help": "Ignored here."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Ignored here."})

    def __post_init__(self):
        _check_choice("dtype", self.dtype, DTYPES)
        if self.model_type is not None:
            _check_choice("model_type", self.model_type, SUPPORTED_MODEL_TYPES)


@dataclass
class DataTrainingArguments:
    """What data to read, and how to tokenize, pack and mask it."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "'tfds:NAME[/CONFIG]', a saved Hugging Face dataset or a Hub name."})
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "The Hugging Face dataset's configuration."})
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Training text: path, comma list or glob; local or gs://; "
                          ".txt, .json(l), .csv, .tfrecord, .gz."})
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Validation text (same forms as train_file)."})
    train_ref_file: Optional[str] = field(
        default=None, metadata={"help": "Chinese whole-word reference file for train_file."})
    validation_ref_file: Optional[str] = field(
        default=None, metadata={"help": "Chinese whole-word reference file for validation_file."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Ignored here (no cache)."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the training lines held out for validation when no "
                          "validation source is given."})
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Tokens per example; every batch is padded to it (static shapes)."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Ignored here (tf.data tunes its own parallelism)."})
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Fraction of tokens to predict."})
    pad_to_max_length: bool = field(
        default=False,
        metadata={"help": "Accepted for compatibility: batches are always padded to "
                          "max_seq_length."})
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One example per line (truncated and padded) instead of packing."})
    whole_word_masking: bool = field(
        default=False, metadata={"help": "Mask whole words rather than single word pieces."})
    max_predictions_per_seq: int = field(
        default=20, metadata={"help": "At most this many predicted tokens per example."})
    mask_replace_prob: float = field(
        default=0.8, metadata={"help": "Of the predicted tokens, the fraction set to [MASK]."})
    random_replace_prob: float = field(
        default=0.1,
        metadata={"help": "Of the predicted tokens, the fraction set to a random token."})
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "Lines in the training stream's bounded shuffle buffer, the last "
                          "stage of its order."})
    read_block_bytes: int = field(
        default=DataConfig.read_block_bytes,
        metadata={"help": "Uncompressed text and JSON lines files are read as blocks of this "
                          "many bytes, in a fresh random order each epoch."})
    blocks_mixed: int = field(
        default=DataConfig.blocks_mixed,
        metadata={"help": "Blocks read together whose lines are shuffled together (memory: "
                          "about this many blocks)."})
    text_column: str = field(
        default="text", metadata={"help": "Column holding the text in json/csv/dataset sources."})
    invalid_utf8: str = field(
        default="error",
        metadata={"help": "Lines of files that are not valid UTF-8: 'error' stops naming the "
                          "file and line, 'replace' replaces the invalid bytes with U+FFFD."})
    chinese_word_segmentation: Optional[str] = field(
        default=None,
        metadata={"help": "'jieba': segment Chinese on the fly for whole-word masking "
                          "(instead of ref files)."})
    max_eval_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Evaluate on at most this many examples (of each validation source)."})
    train_mixture: Optional[str] = field(
        default=None,
        metadata={"help": "Several named training sources instead of train_file/dataset_name: "
                          "'name[column]=SPEC[:weight],...' (SPEC a file spec, tfds:NAME or "
                          "hf:NAME), e.g. 'wiki=data/wiki/*.txt:0.6,books=data/books.jsonl:0.4'; "
                          "in a JSON config, a list of objects (README: Mixtures). Needs "
                          "max_steps."})
    validation_mixture: Optional[str] = field(
        default=None,
        metadata={"help": "Named validation sources, in the form of train_mixture: each is "
                          "evaluated on its own (eval/<name>/loss) and weighted into eval/loss. "
                          "Default with a train_mixture: each source's validation_file or its "
                          "held-out lines."})
    mixture_temperature: Optional[float] = field(
        default=None,
        metadata={"help": "Draw the train_mixture's unweighted sources in proportion to "
                          "size^(1/T) (XLM-R: T=3.3); a weighted source keeps its weight as a "
                          "fixed share."})
    mixture_sizes_from: str = field(
        default="bytes",
        metadata={"help": "Sizes for weights by size: 'bytes' (file sizes, no pass over the "
                          "data) or 'lines' (one counting pass over each source)."})

    def __post_init__(self):
        _check_positive("max_seq_length", self.max_seq_length)
        _check_positive("max_predictions_per_seq", self.max_predictions_per_seq)
        _check_positive("shuffle_buffer_size", self.shuffle_buffer_size)
        _check_positive("read_block_bytes", self.read_block_bytes)
        _check_positive("blocks_mixed", self.blocks_mixed)
        if self.max_eval_samples is not None:
            _check_positive("max_eval_samples", self.max_eval_samples)
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            _check_fraction(name, getattr(self, name))
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError(
                f"mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(f"validation_split_percentage must be in [0, 100), got "
                             f"{self.validation_split_percentage}")
        if self.chinese_word_segmentation is not None:
            _check_choice("chinese_word_segmentation", self.chinese_word_segmentation,
                          WORD_SEGMENTERS)
        _check_choice("invalid_utf8", self.invalid_utf8, INVALID_UTF8)
        self._check_mixtures()

    def _check_mixtures(self):
        """A mixture replaces the single-source data flags; it is parsed (and refused) here."""
        _check_choice("mixture_sizes_from", self.mixture_sizes_from, SIZES_FROM)
        if self.train_mixture is None:
            if self.mixture_temperature is not None:
                raise ValueError("mixture_temperature applies to a train_mixture, which is not "
                                 "set")
        else:
            single = [name for name in MIXTURE_REPLACES if getattr(self, name) is not None]
            if single:
                raise ValueError(
                    f"train_mixture replaces {single[0]}: give each source's data in the "
                    f"mixture (its train_file or dataset_name, refs and validation_file), or "
                    f"drop train_mixture")
            parse_mixture(self.train_mixture, temperature=self.mixture_temperature)
        if self.validation_mixture is not None:
            if self.validation_file is not None:
                raise ValueError("validation_mixture replaces validation_file: drop one")
            parse_validation_mixture(self.validation_mixture)


@dataclass
class TrainingArguments:
    """How to train: run_mlm_flax.py's TrainingArguments plus optimizer, step and cluster."""

    output_dir: str = field(
        metadata={"help": "Where checkpoints, logs and the exported model go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds something other than "
                          "our checkpoints."})
    do_train: bool = field(default=False, metadata={"help": "Train."})
    do_eval: bool = field(default=False, metadata={"help": "Evaluate on the validation set."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Examples per device per optimizer step (before "
                                     "gradient accumulation multiplies it); also read from "
                                     "the older --train_batch_size."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Examples per device."})
    global_train_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Examples per optimizer step over all devices and accumulation "
                          "steps; when set, replaces per_device_train_batch_size, and must be "
                          "a multiple of devices x gradient_accumulation_steps."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "Decoupled weight decay (not on biases and normalisation "
                          "parameters)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam/LAMB beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam/LAMB beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam/LAMB epsilon."})
    adafactor: bool = field(default=False, metadata={"help": "Same as --optimizer adafactor."})
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Epochs to train when max_steps is not set."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})
    logging_steps: int = field(
        default=500, metadata={"help": "Log training metrics every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Save a checkpoint every N steps."})
    eval_steps: Optional[int] = field(
        default=None, metadata={"help": "Evaluate every N steps (default: logging_steps)."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data and dropout."})
    push_to_hub: bool = field(default=False, metadata={"help": "Ignored here."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Ignored here."})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Ignored here."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Ignored here."})

    # Ours.
    max_steps: int = field(
        default=-1,
        metadata={"help": "Optimizer steps to train; when <= 0, num_train_epochs decides."})
    lr_schedule: str = field(
        default="constant * linear_warmup * linear_decay",
        metadata={"help": "Product of factors: constant, linear_warmup, rsqrt_decay, "
                          "rsqrt_normalized_decay, decay_every, cosine_decay, linear_decay."})
    lr_decay_factor: float = field(
        default=0.5, metadata={"help": "decay_every: multiply by this every lr_steps_per_decay."})
    lr_steps_per_decay: int = field(
        default=20_000, metadata={"help": "decay_every: steps between decays."})
    optimizer: Optional[str] = field(
        default=None,
        metadata={"help": "adamw, lamb or adafactor (default adamw, or adafactor with "
                          "--adafactor)."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip gradients to this global norm; 0 disables."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Micro-batches per optimizer step, summed exactly as one big batch."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the loss."})
    full_mlm_head: bool = field(
        default=False,
        metadata={"help": "Compute the MLM head at every position and take the loss from "
                          "'labels' (slower; by default only masked positions are computed)."})
    skip_nonfinite_updates: bool = field(
        default=False,
        metadata={"help": "Skip (and count) updates whose loss or gradients are not finite."})
    save_total_limit: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (default: all)."})
    profile_steps: int = field(
        default=0, metadata={"help": "Profile this many steps (TensorBoard trace); 0: off."})
    compilation_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "JAX's persistent compilation cache, so that a restarted run skips "
                          "compiling its steps (local or gs://). Default: "
                          "JAX_COMPILATION_CACHE_DIR if set, else OUTPUT_DIR/compilation_cache; "
                          "'' turns it off."})
    fill_mask_samples: int = field(
        default=0,
        metadata={"help": "At the end, show the model's guesses for a hidden word in this many "
                          "held-out sentences."})
    parallelism: str = field(
        default="pmap",
        metadata={"help": "pmap: every device holds the whole model (data parallel); mesh: "
                          "jit over a device mesh with the parameters and optimizer state "
                          "sharded over its fsdp axis (see --mesh_shape)."})
    mesh_shape: Optional[str] = field(
        default=None,
        metadata={"help": "With --parallelism mesh: the axis sizes, e.g. 'data=-1,fsdp=4' "
                          "(-1: the rest of the devices; default 'data=-1')."})
    coordinator_address: Optional[str] = field(
        default=None, metadata={"help": "Multi-host: the coordinator's host:port."})
    num_processes: Optional[int] = field(
        default=None, metadata={"help": "Multi-host: number of processes."})
    process_id: Optional[int] = field(
        default=None, metadata={"help": "Multi-host: this process's index."})

    def __post_init__(self):
        # Imported here, not at the top: both load JAX, which --help must not wait for.
        from trainer.mesh import parse_mesh_shape  # pylint: disable=import-outside-toplevel
        from trainer.schedules import (  # pylint: disable=import-outside-toplevel
            create_learning_rate_schedule)

        self.output_dir = os.path.expanduser(self.output_dir)
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.optimizer is None:
            self.optimizer = "adafactor" if self.adafactor else "adamw"
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.adafactor and self.optimizer != "adafactor":
            raise ValueError(f"--adafactor contradicts --optimizer {self.optimizer}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "logging_steps", "save_steps", "eval_steps", "gradient_accumulation_steps",
                     "lr_steps_per_decay"):
            _check_positive(name, getattr(self, name))
        if self.global_train_batch_size is not None:
            _check_positive("global_train_batch_size", self.global_train_batch_size)
        if self.save_total_limit is not None:
            _check_positive("save_total_limit", self.save_total_limit)
        for name in ("warmup_steps", "max_grad_norm", "weight_decay", "profile_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_choice("parallelism", self.parallelism, PARALLELISMS)
        if self.mesh_shape is not None:
            if self.parallelism != "mesh":
                raise ValueError("mesh_shape applies to --parallelism mesh only; add "
                                 "--parallelism mesh, or drop mesh_shape")
            parse_mesh_shape(self.mesh_shape)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        # Fail on a misspelt factor now, not after the data and model have loaded.
        create_learning_rate_schedule(self.lr_schedule, base_learning_rate=self.learning_rate,
                                      warmup_steps=self.warmup_steps, total_steps=1)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


# The single-source data flags that a train_mixture's sources replace.
MIXTURE_REPLACES = ("train_file", "dataset_name", "dataset_config_name", "train_ref_file",
                    "validation_file", "validation_ref_file")
# Arguments that a JSON config may give as a list of objects (passed on as JSON text).
JSON_LIST_FIELDS = ("train_mixture", "validation_mixture")
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments)


DESCRIPTION = """\
Pretrain or fine-tune a BERT-style masked language model on streaming text.

Two ways to run it:
  python train.py --model_type bert --tokenizer_name DIR --train_file 'data/*.txt' \\
      --output_dir runs/x --max_steps 10000
  python train.py CONFIG.json [--flag VALUE ...]
      the JSON file's values (argument names as keys), with any flags after it on top:
      a flag given on the command line wins over the same key in the file.

A rerun with the same --output_dir resumes from its latest checkpoint (changed arguments
are listed, and those the checkpoint cannot follow are refused). A boolean flag alone
means true: --do_train is --do_train true.
"""

# --help's sections, in order. A field not named in SECTION_FIELDS is in its class's section.
CLASS_SECTIONS = {ModelArguments: "model", DataTrainingArguments: "data",
                  TrainingArguments: "training"}
SECTION_FIELDS = {
    "masking": ("mlm_probability", "max_predictions_per_seq", "mask_replace_prob",
                "random_replace_prob", "whole_word_masking", "chinese_word_segmentation"),
    "evaluation and logging": ("do_eval", "per_device_eval_batch_size", "eval_steps",
                               "max_eval_samples", "logging_steps", "profile_steps",
                               "fill_mask_samples"),
    "output and checkpoints": ("output_dir", "overwrite_output_dir", "save_steps",
                               "save_total_limit", "compilation_cache_dir"),
    "parallelism and multi-host": ("parallelism", "mesh_shape", "coordinator_address",
                                   "num_processes", "process_id"),
    "accepted for run_mlm_flax.py, without effect here": IGNORED_FIELDS,
}
SECTIONS = ("model", "data", "masking", "training",
            *(section for section in SECTION_FIELDS if section != "masking"))
# Flags of older write-ups of run_mlm_flax.py, read as today's name with a one-line note.
RENAMED_FLAGS = {"train_batch_size": "per_device_train_batch_size"}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not the 100-line usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _section(cls, name):
    return next((section for section, names in SECTION_FIELDS.items() if name in names),
                CLASS_SECTIONS[cls])


def _to_bool(text):
    lowered = text.lower()
    if lowered in ("true", "yes", "y", "1"):
        return True
    if lowered in ("false", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _value_type(annotation):
    """The scalar type of a field annotated T or Optional[T]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [t for t in typing.get_args(annotation) if t is not type(None)]
    if annotation not in (bool, int, float, str):
        raise TypeError(f"no command-line form for a field of type {annotation}")
    return annotation


def _help_text(f):
    """The field's help plus its default, once (unless the help itself names the default)."""
    text = f.metadata.get("help", "")
    default = f.default
    if default not in (dataclasses.MISSING, None) and default is not False and \
            "default" not in text.lower():
        shown = str(default).lower() if isinstance(default, bool) else default
        text += f" (default: {shown!r})" if isinstance(shown, str) and " " in shown \
            else f" (default: {shown})"
    return text.replace("%", "%%")


def build_parser(prog=None):
    """The command line's parser, one flag per dataclass field, grouped into SECTIONS."""
    # No abbreviations: a misspelt --max_seq_len must not silently mean --max_seq_length.
    parser = _Parser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                     usage="%(prog)s [CONFIG.json] [--flag VALUE ...]",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {section: parser.add_argument_group(section) for section in SECTIONS}
    for cls in ARGUMENT_CLASSES:
        for f in dataclasses.fields(cls):
            kind = _value_type(f.type)
            options = {"help": _help_text(f)}
            if f.default is dataclasses.MISSING:
                options["required"] = True
            else:
                options["default"] = f.default
            if kind is bool:
                options.update(type=_to_bool, nargs="?", const=True, metavar="true|false")
            else:
                options.update(type=kind, metavar=kind.__name__.upper())
            groups[_section(cls, f.name)].add_argument(f"--{f.name}", **options)
    return parser


def _canonical_flags(argv):
    """--flag-name as --flag_name, and a RENAMED_FLAGS name as today's (with a note)."""
    canonical = []
    for arg in argv:
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            if name in RENAMED_FLAGS:
                logger.warning("--%s is read as --%s", name, RENAMED_FLAGS[name])
                name = RENAMED_FLAGS[name]
            arg = f"--{name}{equals}{value}"
        canonical.append(arg)
    return canonical


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive(name, value):
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_fraction(name, value):
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _json_to_flags(path, parser):
    """A JSON config as command-line flags, so both forms get the same type checks."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except OSError as e:
        parser.error(f"cannot read {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        parser.error(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    if not isinstance(values, dict):
        parser.error(f"{path}: expected a JSON object of argument names and values")
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - set(RENAMED_FLAGS))
    if unknown:
        parser.error(f"{path}: unknown arguments: {', '.join(unknown)}")
    flags = []
    for name, value in values.items():
        if value is None:  # JSON null: keep the default.
            continue
        if isinstance(value, list) and name in JSON_LIST_FIELDS:
            value = json.dumps(value)
        elif isinstance(value, (dict, list)):
            parser.error(f"{path}: {name} must be a single value, got {json.dumps(value)}")
        flags += [f"--{name}", str(value)]
    return flags


def parse_args(argv=None):
    """Parses [CONFIG.json] [flags] into (model_args, data_args, training_args).

    A .json file first gives its values as flags would; the flags after it
    come later and so win. Any error (unknown flag, bad value, unreadable
    JSON) exits with a one-line usage error that names it, as argparse does.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        argv = _json_to_flags(argv[0], parser) + argv[1:]
    # A .json argument that is no flag's value: a config file given after flags.
    later = [arg for before, arg in zip(argv, argv[1:])
             if arg.endswith(".json") and not before.startswith("-")]
    if later:
        parser.error(f"{later[0]}: a JSON config file comes first: "
                     f"{parser.prog} CONFIG.json [--flag VALUE ...]")
    namespace, unknown = parser.parse_known_args(_canonical_flags(argv))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        parsed = tuple(
            cls(**{f.name: getattr(namespace, f.name)
                   for f in dataclasses.fields(cls) if f.init})
            for cls in ARGUMENT_CLASSES)
    except ValueError as e:
        parser.error(str(e))
    _check_mixture_steps(parsed[1], parsed[2], parser)
    ignored = ignored_settings(*parsed)
    if ignored:
        logger.warning("These settings have no effect in this trainer: %s", ", ".join(ignored))
    return parsed


def _check_mixture_steps(data_args, training_args, parser):
    """A training mixture has no epoch to count steps by (each source repeats on its own)."""
    training = training_args.do_train or not training_args.do_eval
    if data_args.train_mixture and training and training_args.max_steps <= 0:
        parser.error("train_mixture needs max_steps: each source repeats on its own, so the "
                     "mixture has no epoch for num_train_epochs to count")


def ignored_settings(*arguments):
    """Names of the compatibility-only fields that are set to something other than default."""
    return [f.name for args in arguments for f in dataclasses.fields(args)
            if f.name in IGNORED_FIELDS and getattr(args, f.name) != f.default]


def per_device_train_batch(training_args, device_count):
    """Examples per device in one micro-batch: the per-device flag, or the global batch split.

    A global batch that devices x accumulation steps do not divide is refused
    rather than rounded, so the effective batch is always the one asked for.
    """
    total = training_args.global_train_batch_size
    if total is None:
        return training_args.per_device_train_batch_size
    parts = device_count * training_args.gradient_accumulation_steps
    if total % parts:
        raise UserError(
            f"global_train_batch_size {total} cannot be split over {device_count} devices x "
            f"{training_args.gradient_accumulation_steps} gradient accumulation steps: it "
            f"must be a multiple of {parts}")
    return total // parts


def data_config(data_args, training_args):
    """The pipeline's settings, taken from the data arguments and the run seed."""
    values = {f.name: getattr(data_args, f.name)
              for f in dataclasses.fields(DataConfig) if f.name != "seed"}
    return DataConfig(seed=training_args.seed, **values)


def hparams(*arguments):
    """All arguments as one flat dict for logging, with secrets (tokens) hidden."""
    flat = {}
    for args in arguments:
        for name, value in dataclasses.asdict(args).items():
            secret = name == "token" or name.endswith("_token")
            flat[name] = "<hidden>" if secret and value is not None else value
    return flat


# Arguments a resumed run must keep, because what its checkpoint holds follows them; each
# with the reason. Batch sizes are checked against the checkpoint's input position itself
# (which allows another number of devices with the same global batch), and the model's
# shapes against its parameters (config_overrides may change dropout, not shapes).
_ITS_MODEL = "the checkpoint holds the weights of the model it started from"
KEPT_ON_RESUME = {
    "model_name_or_path": _ITS_MODEL,
    "model_type": _ITS_MODEL,
    "config_name": _ITS_MODEL,
    "tokenizer_name": "the checkpoint's embeddings and input position follow its tokenizer",
    "optimizer": "the checkpoint holds its optimizer's state",
}
# Data settings that do not shape the training stream: a resumed run may change them.
_NOT_TRAINING_STREAM = ("validation_file", "validation_ref_file", "validation_mixture",
                        "max_eval_samples",
                        "invalid_utf8")  # invalid_utf8 replace is the fix for a bad line


def kept_on_resume(name, training: bool) -> Optional[str]:
    """Why a resumed run cannot change argument `name`, or None when it may.

    When training, the pipeline's settings (and the seed, which orders the data
    and draws the masks) define the stream whose position the checkpoint holds.
    """
    if name in KEPT_ON_RESUME:
        return KEPT_ON_RESUME[name]
    stream = {f.name for f in dataclasses.fields(DataConfig)} - set(_NOT_TRAINING_STREAM)
    if training and name in stream:
        return "the checkpoint's input position is a position in the training stream these " \
               "settings define"
    return None
