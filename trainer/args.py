"""Command-line arguments: run_mlm_flax.py's three dataclasses, plus what this trainer adds.

The flags are derived from the settings' own definitions: the data flags are
pipeline/config.py's DataConfig fields, the step's are trainer/step_options.py's
StepOptions fields, each with its default, help text and check; this module
adds the model's and the run's, and the command line's machinery (grouped
--help, a JSON config with flags on top). Field names and defaults follow
Hugging Face's run_mlm_flax.py so that its commands and JSON files keep
working; flags it accepts that mean nothing here are still accepted and named
in one warning line. Where run_mlm_flax.py would crash on a missing value
(max_seq_length, eval_steps) we pick a default.
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
from pipeline.config import SOURCE_FIELDS, DataConfig, check_choice, check_positive
from pipeline.errors import InputError, UserError
from pipeline.mixture_spec import parse_mixture, parse_validation_mixture
from trainer.step_options import StepOptions

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "lamb", "adafactor")
DTYPES = ("float32", "float16", "bfloat16")
PARALLELISMS = ("pmap", "mesh")
INIT_OPTIMIZER_STATES = ("keep", "reset")  # --init_optimizer_state (trainer/phases.py)

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
        check_choice("dtype", self.dtype, DTYPES)
        if self.model_type is not None:
            check_choice("model_type", self.model_type, SUPPORTED_MODEL_TYPES)


@dataclass(frozen=True)
class DataTrainingArguments(DataConfig):
    """The data flags: DataConfig's settings, and run_mlm_flax.py's data flags without effect.

    Its seed is the run's --seed (a training flag; see FLAGS_OF_ANOTHER_SECTION).
    """

    overwrite_cache: bool = field(default=False, metadata={"help": "Ignored here (no cache)."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Ignored here (tf.data tunes its own parallelism)."})
    pad_to_max_length: bool = field(
        default=False,
        metadata={"help": "Accepted for compatibility: batches are always padded to "
                          "max_seq_length."})

    def __post_init__(self):
        super().__post_init__()
        self._check_mixtures()

    def _check_mixtures(self):
        """A mixture replaces the single-source data flags; it is parsed (and refused) here."""
        if self.train_mixture is None:
            if self.mixture_temperature is not None:
                raise InputError("mixture_temperature applies to a train_mixture, which is not "
                                 "set")
        else:
            single = [name for name in SOURCE_FIELDS if getattr(self, name) is not None]
            if single:
                raise InputError(
                    f"train_mixture replaces {single[0]}: give each source's data in the "
                    f"mixture (its train_file or dataset_name, refs and validation_file), or "
                    f"drop train_mixture")
            parse_mixture(self.train_mixture, temperature=self.mixture_temperature)
        if self.validation_mixture is not None:
            if self.validation_file is not None:
                raise InputError("validation_mixture replaces validation_file: drop one")
            parse_validation_mixture(self.validation_mixture)


@dataclass(frozen=True, kw_only=True)
class TrainingArguments(StepOptions):
    """How to train: run_mlm_flax.py's TrainingArguments plus optimizer, step and cluster.

    The step's own options (gradient accumulation, label smoothing, ...) are
    StepOptions' fields. Frozen, as StepOptions is: the defaults that depend on
    other flags are resolved once, in __post_init__.
    """

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
    save_total_limit: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (default: all)."})
    profile_steps: int = field(
        default=0, metadata={"help": "Profile this many steps, about 10 steps in, for TensorBoard's "
                                     "profile tab (steps, XLA ops, host threads; no per-call "
                                     "Python events); 0: off."})
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
    init_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Start from another run's checkpoint (BERT's second phase): its "
                          "output_dir (the latest step) or OUTPUT_DIR/checkpoints/STEP, local "
                          "or gs://. This run's step, schedule and data start at 0; it needs "
                          "the same model shapes and vocabulary."})
    init_optimizer_state: str = field(
        default="keep",
        metadata={"help": "With --init_checkpoint: keep its optimizer state (moments), or "
                          "reset it (a fresh optimizer; only the parameters carry over)."})
    coordinator_address: Optional[str] = field(
        default=None, metadata={"help": "Multi-host: the coordinator's host:port."})
    num_processes: Optional[int] = field(
        default=None, metadata={"help": "Multi-host: number of processes."})
    process_id: Optional[int] = field(
        default=None, metadata={"help": "Multi-host: this process's index."})

    def __post_init__(self):
        # Imported here, not at the top: both load JAX, which --help must not wait for.
        from trainer.mesh import parse_mesh_shape  # pylint: disable=import-outside-toplevel
        from trainer.schedules import factor_names  # pylint: disable=import-outside-toplevel

        super().__post_init__()  # the step's options
        object.__setattr__(self, "output_dir", os.path.expanduser(self.output_dir))
        if self.eval_steps is None:
            object.__setattr__(self, "eval_steps", self.logging_steps)
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", "adafactor" if self.adafactor else "adamw")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.adafactor and self.optimizer != "adafactor":
            raise UserError(f"--adafactor contradicts --optimizer {self.optimizer}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "logging_steps", "save_steps", "eval_steps", "lr_steps_per_decay"):
            check_positive(name, getattr(self, name))
        if self.global_train_batch_size is not None:
            check_positive("global_train_batch_size", self.global_train_batch_size)
        if self.save_total_limit is not None:
            check_positive("save_total_limit", self.save_total_limit)
        for name in ("warmup_steps", "max_grad_norm", "weight_decay", "profile_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_choice("parallelism", self.parallelism, PARALLELISMS)
        check_choice("init_optimizer_state", self.init_optimizer_state, INIT_OPTIMIZER_STATES)
        if self.mesh_shape is not None:
            if self.parallelism != "mesh":
                raise UserError("mesh_shape applies to --parallelism mesh only; add "
                                "--parallelism mesh, or drop mesh_shape")
            parse_mesh_shape(self.mesh_shape)
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}")
        # Fail on a misspelt factor now, not after the data and model have loaded. (Whether
        # the schedule trains at all is checked by train.py: evaluating it here would start
        # JAX's backend before a multi-host run joins its cluster.)
        factor_names(self.lr_schedule)


# Arguments that a JSON config may give as a list of objects (passed on as JSON text).
JSON_LIST_FIELDS = ("train_mixture", "validation_mixture")
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments)
# Fields that another class's flag of the same name sets: the data's seed is the run's --seed.
FLAGS_OF_ANOTHER_SECTION = {DataTrainingArguments: ("seed",)}


def flag_fields(cls):
    """The fields of an argument class that are flags of its own, in their order."""
    elsewhere = FLAGS_OF_ANOTHER_SECTION.get(cls, ())
    return [f for f in dataclasses.fields(cls) if f.name not in elsewhere]


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
                               "save_total_limit", "compilation_cache_dir", "init_checkpoint",
                               "init_optimizer_state"),
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
        for f in flag_fields(cls):
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
    known = {f.name for cls in ARGUMENT_CLASSES for f in flag_fields(cls)}
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
    try:  # every field from its flag (a FLAGS_OF_ANOTHER_SECTION field from the other's)
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


def run_modes(training_args):
    """(trains, evaluates): what the run does; with neither flag, both."""
    return (training_args.do_train or not training_args.do_eval,
            training_args.do_eval or not training_args.do_train)


def _check_mixture_steps(data_args, training_args, parser):
    """A training mixture has no epoch to count steps by (each source repeats on its own)."""
    training, _ = run_modes(training_args)
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
    """The pipeline's settings: the data arguments less the flags without effect, the run seed."""
    values = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{**values, "seed": training_args.seed})


def hparams(*arguments):
    """All arguments as one flat dict (a key per flag) for logging, with secrets hidden."""
    flat = {}
    for args in arguments:
        for f in flag_fields(type(args)):
            value = getattr(args, f.name)
            secret = f.name == "token" or f.name.endswith("_token")
            flat[f.name] = "<hidden>" if secret and value is not None else value
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
