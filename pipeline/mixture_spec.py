"""A data mixture as named sources: parsing, validation and sampling weights (no TensorFlow).

Two forms describe the same thing. The command line:

    wiki=data/wiki/*.txt:0.6,books[body]=gs://b/books/*.jsonl:0.3,c4=tfds:c4/en:0.1

Each source is `name[column]=SPEC[:weight]`. SPEC is a file spec as for
train_file (a path, glob or comma list: a part without `name=` continues the
previous source's list), `tfds:NAME[/CONFIG]`, or `hf:NAME` (a Hugging Face
hub name, data folder or save_to_disk directory; a configuration name only in
the JSON form). SPEC may itself hold ':'
(gs://, tfds:), so only a last ':' part that reads as a number is the weight;
`[column]` sets the source's text column. A part starts a new source when the
text before its first '=' holds no '/', ':' or '\\', so a path such as
`./date=2024/x.txt` continues a list. The JSON form (a list, or a command-line
value starting with '[') is a list of objects whose fields are `FIELDS`:
train_file or dataset_name (+ dataset_config_name), text_column, the
reference and validation files, chinese_word_segmentation,
whole_word_masking and weight. Fields a source leaves out that are
processing options (text_column, chinese_word_segmentation,
whole_word_masking) take the run's value; its data fields never do.

Names become TensorBoard tags (`eval/<name>/loss`), hence their characters.

Weights: every source weighted (normalised), or none, in which case the
sources are drawn in proportion to their size (temperature 1). With a
temperature T, unweighted sources are drawn in proportion to size^(1/T) and
a weighted one keeps its weight as a fixed share of the mixture (the
weights given must then sum to less than 1): this is how a streamed Hugging
Face dataset, which has no size, joins a temperature mixture. Sizes come
from `mixture_sizes`; they must all be in one unit.
"""

import dataclasses
import difflib
import json
import math
import re
from typing import Optional

from pipeline.config import SOURCE_FIELDS, WORD_SEGMENTERS, DataConfig
from pipeline.errors import InputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SOURCE_START = re.compile(r"(?P<head>[^=/:\\]+)=(?P<spec>.*)", re.DOTALL)
_HEAD = re.compile(r"(?P<name>[^\[\]]*)(?:\[(?P<column>[^\[\]]*)\])?")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_OPTION_FIELDS = ("text_column", "chinese_word_segmentation", "whole_word_masking")


@dataclasses.dataclass(frozen=True)
class Source:
    """One named source of a mixture; None means "not given" (see the module docstring)."""

    name: str
    train_file: Optional[str] = None
    dataset_name: Optional[str] = None  # "tfds:NAME[/CONFIG]" or a Hugging Face dataset
    dataset_config_name: Optional[str] = None
    train_ref_file: Optional[str] = None
    validation_file: Optional[str] = None
    validation_ref_file: Optional[str] = None
    text_column: Optional[str] = None
    chinese_word_segmentation: Optional[str] = None
    whole_word_masking: Optional[bool] = None
    weight: Optional[float] = None

    @property
    def data(self):
        """What the source reads, for messages: its file spec or dataset name."""
        return self.train_file or self.dataset_name


FIELDS = tuple(f.name for f in dataclasses.fields(Source))


def parse_mixture(value, *, temperature=None, flag="train_mixture"):
    """The sources of a mixture given as a command-line string or a JSON list, validated.

    Raises InputError with one line naming the flag, the source and the
    field for the first mistake found.
    """
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError(f"{flag}: not valid JSON ({e})") from e
    if isinstance(value, str):
        sources = _parse_command_line(value, flag)
    elif isinstance(value, (list, tuple)):
        sources = [_from_json(item, index, flag) for index, item in enumerate(value, 1)]
    else:
        raise InputError(f"{flag}: expected 'name=SPEC[:weight],...' or a JSON list of "
                         f"objects, got {type(value).__name__}")
    if not sources:
        raise InputError(f"{flag}: no sources")
    _check_names(sources, flag)
    for source in sources:
        _check_source(source, flag)
    _check_weights(sources, temperature, flag)
    return tuple(sources)


def parse_validation_mixture(value):
    """The sources of a validation_mixture: each source's SPEC is its validation data."""
    sources = parse_mixture(value, flag="validation_mixture")
    for source in sources:
        for key in ("validation_file", "validation_ref_file"):
            if getattr(source, key):
                _fail("validation_mixture", source.name, key,
                      "not used here: a validation source's data is its train_file (with "
                      "train_ref_file) or dataset_name")
    return sources


def _fail(flag, source, field, problem):
    raise InputError(f"{flag}: source {source!r}: {field}: {problem}")


def _parse_command_line(value, flag):
    """Sources from `name[column]=SPEC[:weight],...` (see the module docstring)."""
    groups = []  # [head, [parts]] per source
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        start = _SOURCE_START.fullmatch(part)
        if start:
            groups.append([start["head"].strip(), [start["spec"].strip()]])
        elif groups:
            groups[-1][1].append(part)
        else:
            raise InputError(f"{flag}: expected name=SPEC[:weight] at {part!r}")
    return [_from_command_line(head, parts, flag) for head, parts in groups]


def _from_command_line(head, parts, flag):
    match = _HEAD.fullmatch(head)
    if not match:
        raise InputError(f"{flag}: expected name or name[column] before '=', got {head!r}")
    name, column = match["name"].strip(), match["column"]
    for part in parts[:-1]:
        if _weight_suffix(part)[1] is not None:
            _fail(flag, name, "weight", f"must follow the source's last file, not {part!r}")
    spec, weight = _weight_suffix(parts[-1])
    spec = ",".join(parts[:-1] + [spec])
    if not spec:
        _fail(flag, name, "data", "nothing after '='; expected a file spec, tfds:NAME or hf:NAME")
    fields = {"name": name, "weight": weight}
    if column is not None:
        fields["text_column"] = column.strip()
    if spec.startswith(("tfds:", "hf:")):
        fields["dataset_name"] = spec
    else:
        fields["train_file"] = spec
    return _make_source(fields)


def _weight_suffix(part):
    """(part without its weight, the weight or None): the last ':' part, if a number."""
    head, colon, tail = part.rpartition(":")
    if colon and _NUMBER.fullmatch(tail.strip()):
        return head.strip(), float(tail)
    return part, None


def _from_json(item, index, flag):
    if not isinstance(item, dict):
        raise InputError(f"{flag}: item {index}: expected an object with fields "
                         f"{', '.join(FIELDS)}, got {item!r}")
    label = item.get("name") if isinstance(item.get("name"), str) else f"item {index}"
    for key in item:
        if key not in FIELDS:
            nearest = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean {nearest[0]!r}?" if nearest else (
                f"expected one of {', '.join(FIELDS)}")
            _fail(flag, label, key, f"unknown field; {hint}")
    if "name" not in item:
        _fail(flag, label, "name", "missing")
    for key, value in item.items():
        _check_type(flag, label, key, value)
    return _make_source(item)


def _check_type(flag, label, key, value):
    if key == "whole_word_masking":
        ok, expected = isinstance(value, bool), "true or false"
    elif key == "weight":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        expected = "a number"
    else:
        ok = isinstance(value, str) or (value is None and key != "name")
        expected = "a string"
    if not ok:
        _fail(flag, label, key, f"expected {expected}, got {value!r}")


def _make_source(fields):
    """A Source, with an `hf:` prefix taken off (a dataset_name without `tfds:` is HF's)."""
    name = fields.get("dataset_name")
    if isinstance(name, str) and name.startswith("hf:"):
        fields = {**fields, "dataset_name": name[len("hf:"):]}
    return Source(**fields)


def _check_names(sources, flag):
    seen = set()
    for index, source in enumerate(sources, 1):
        if not _NAME.fullmatch(source.name):
            _fail(flag, source.name, "name",
                  "expected 1 to 64 letters, digits, '_', '-' or '.', starting with a letter "
                  "or digit (names become TensorBoard tags)")
        if source.name in seen:
            _fail(flag, source.name, "name", f"used twice (again by source {index})")
        seen.add(source.name)


def _check_source(source, flag):
    """The rules that hold for one source on its own."""

    def fail(field, problem):
        _fail(flag, source.name, field, problem)

    for key in ("train_file", "dataset_name", "dataset_config_name", "train_ref_file",
                "validation_file", "validation_ref_file", "text_column"):
        if getattr(source, key) is not None and not getattr(source, key).strip():
            fail(key, "empty")
    if bool(source.train_file) == bool(source.dataset_name):
        fail("train_file", "expected exactly one of train_file and dataset_name")
    if source.dataset_name and "," in source.dataset_name:
        fail("dataset_name", f"expected one dataset, got {source.dataset_name!r}")
    if source.dataset_config_name and not source.dataset_name:
        fail("dataset_config_name", "applies to dataset_name, which is not set")
    if source.train_ref_file and not source.train_file:
        fail("train_ref_file", "needs a train_file (a reference file aligns with a .txt file)")
    if source.validation_ref_file and not source.validation_file:
        fail("validation_ref_file", "needs a validation_file")
    if source.chinese_word_segmentation not in (None, *WORD_SEGMENTERS):
        fail("chinese_word_segmentation",
             f"expected {' or '.join(map(repr, WORD_SEGMENTERS))}, got "
             f"{source.chinese_word_segmentation!r}")
    if source.weight is not None and not (math.isfinite(source.weight) and source.weight > 0):
        fail("weight", f"expected a number > 0, got {source.weight:g}")


def _check_weights(sources, temperature, flag):
    """All weighted or none; with a temperature, fixed shares summing to less than 1."""
    weighted = [s for s in sources if s.weight is not None]
    unweighted = [s.name for s in sources if s.weight is None]
    if temperature is None:
        if weighted and unweighted:
            _fail(flag, unweighted[0], "weight",
                  f"missing, while {weighted[0].name!r} has one: weight every source, or none "
                  "(drawn in proportion to size), or set mixture_temperature")
        return
    if not (math.isfinite(temperature) and temperature > 0):
        raise InputError(f"mixture_temperature: expected a number > 0, got {temperature:g}")
    if not unweighted:
        raise InputError("mixture_temperature: every source of the mixture has a weight, so "
                         "there is nothing to weigh by size; drop the weights or the "
                         "temperature")
    fixed = sum(s.weight for s in weighted)
    if fixed >= 1:
        _fail(flag, weighted[-1].name, "weight",
              f"with mixture_temperature a weight is a fixed share of the mixture; the shares "
              f"given sum to {fixed:g}, leaving nothing for {', '.join(unweighted)}")


def needs_sizes(sources):
    """Whether any source's weight comes from its size."""
    return any(s.weight is None for s in sources)


def weights(sources, sizes=None, temperature=None, flag="train_mixture"):
    """Each source's probability (summing to 1), in source order.

    `sizes` holds, per source, a (size, unit) pair or None where unknown; it
    is read only for sources without a weight.
    """
    _check_weights(sources, temperature, flag)  # parse_mixture may have had no temperature
    if not needs_sizes(sources):
        total = sum(s.weight for s in sources)
        return [s.weight / total for s in sources]
    temperature = 1.0 if temperature is None else temperature
    sized = {}
    for source, size in zip(sources, sizes):
        if source.weight is not None:
            continue
        if size is None:
            raise InputError(
                f"source {source.name!r} ({source.data}) has no known size (a streamed Hugging "
                "Face dataset): give it a weight")
        if size[0] <= 0:
            raise InputError(f"source {source.name!r} ({source.data}) is empty: its size is "
                             f"0 {size[1]}")
        sized[source.name] = size
    units = {unit for _, unit in sized.values()}
    if len(units) > 1:
        shown = ", ".join(f"{name} in {unit}" for name, (_, unit) in sized.items())
        raise InputError(f"weights by size need every size in one unit, but they are measured "
                         f"{shown}; pass mixture_sizes_from lines to count lines everywhere, "
                         "or weight every source")
    # size^(1/T), normalised, computed in logs: a small T would overflow a float.
    logs = {name: math.log(size) / temperature for name, (size, _) in sized.items()}
    top = max(logs.values())
    raw = {name: math.exp(value - top) for name, value in logs.items()}
    share = (1.0 - sum(s.weight for s in sources if s.weight is not None)) / sum(raw.values())
    return [s.weight if s.weight is not None else share * raw[s.name] for s in sources]


def source_config(config: DataConfig, source: Source) -> DataConfig:
    """The DataConfig reading `source`: its data fields; the run's options unless it sets them."""
    data = {key: getattr(source, key) for key in SOURCE_FIELDS}
    options = {key: getattr(source, key) for key in _OPTION_FIELDS
               if getattr(source, key) is not None}
    return dataclasses.replace(config, **data, **options)
