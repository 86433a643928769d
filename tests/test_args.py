"""The command line: run_mlm_flax.py's flags and JSON files, our additions, clear errors."""

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from pipeline.config import DataConfig
from pipeline.errors import InputError
from trainer.args import ARGUMENT_CLASSES, SECTION_FIELDS, data_config, hparams, parse_args
from trainer.step_options import StepOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A command from Hugging Face's run_mlm_flax.py documentation (with local files).
RUN_MLM_FLAX_COMMAND = [
    "--output_dir", "./norwegian-roberta-base", "--model_type", "roberta",
    "--config_name", "./norwegian-roberta-base", "--tokenizer_name", "./norwegian-roberta-base",
    "--train_file", "train.txt", "--validation_file", "valid.txt",
    "--max_seq_length", "128", "--weight_decay", "0.01",
    "--per_device_train_batch_size", "128", "--per_device_eval_batch_size", "128",
    "--learning_rate", "3e-4", "--warmup_steps", "1000", "--overwrite_output_dir",
    "--num_train_epochs", "18", "--adam_beta1", "0.9", "--adam_beta2", "0.98",
    "--logging_steps", "500", "--save_steps", "2500", "--eval_steps", "2500",
    "--do_train", "--do_eval", "--push_to_hub", "--hub_token", "secret",
]


def error_of(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_run_mlm_flax_command_parses_and_warns_once_about_hub_flags(caplog):
    with caplog.at_level(logging.WARNING):
        model_args, data_args, training_args = parse_args(RUN_MLM_FLAX_COMMAND)
    assert model_args.model_type == "roberta"
    assert data_args.train_file == "train.txt" and data_args.max_seq_length == 128
    assert training_args.learning_rate == 3e-4 and training_args.num_train_epochs == 18
    assert training_args.do_train and training_args.overwrite_output_dir
    assert training_args.optimizer == "adamw"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "push_to_hub" in warnings[0] and "hub_token" in warnings[0]
    assert "secret" not in warnings[0]


def test_json_file_gives_the_same_arguments_as_flags(tmp_path):
    values = {}
    flags = iter(RUN_MLM_FLAX_COMMAND)
    for flag in flags:
        name = flag[2:]
        if name in ("overwrite_output_dir", "do_train", "do_eval", "push_to_hub"):
            values[name] = True
        else:
            text = next(flags)
            values[name] = float(text) if name in ("learning_rate", "weight_decay") else text
    values["eval_steps"] = None  # JSON null keeps the default
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    from_json = parse_args([str(path)])
    at = RUN_MLM_FLAX_COMMAND.index("--eval_steps")
    from_flags = parse_args(RUN_MLM_FLAX_COMMAND[:at] + RUN_MLM_FLAX_COMMAND[at + 2:])
    assert from_json == from_flags
    assert from_json[2].eval_steps == 500  # = logging_steps


def test_defaults_where_run_mlm_flax_crashes():
    _, data_args, training_args = parse_args(["--output_dir", "out"])
    assert data_args.max_seq_length == 128
    assert training_args.eval_steps == training_args.logging_steps == 500
    assert training_args.seed == 42 and training_args.learning_rate == 5e-5


def test_unknown_flags_are_named(capsys):
    err = error_of(["--output_dir", "out", "--max_seq_len", "64", "--frobnicate"], capsys)
    assert "--max_seq_len 64 --frobnicate" in err


def test_bad_values_are_named(capsys):
    assert "--learning_rate" in error_of(["--output_dir", "o", "--learning_rate", "fast"], capsys)
    assert "optimizer" in error_of(["--output_dir", "o", "--optimizer", "sgd"], capsys)
    assert "--adafactor contradicts --optimizer lamb" in error_of(
        ["--output_dir", "o", "--adafactor", "--optimizer", "lamb"], capsys)
    assert "rsqrt_dekay" in error_of(
        ["--output_dir", "o", "--lr_schedule", "constant * rsqrt_dekay"], capsys)
    assert "mask_replace_prob + random_replace_prob" in error_of(
        ["--output_dir", "o", "--mask_replace_prob", "0.95"], capsys)
    assert "output_dir" in error_of([], capsys)


def test_json_errors_name_the_file_and_problem(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text('{"output_dir": "o", "max_seq_lenght": 64, "seed": 1}')
    assert "run.json: unknown arguments: max_seq_lenght" in error_of([str(path)], capsys)
    path.write_text('{"output_dir": "o",\n "seed": }')
    assert "run.json: invalid JSON at line 2" in error_of([str(path)], capsys)
    path.write_text('{"output_dir": "o", "seed": "one"}')
    assert "--seed" in error_of([str(path)], capsys)
    assert "cannot read" in error_of([str(tmp_path / "missing.json")], capsys)


def test_optimizer_choice():
    assert parse_args(["--output_dir", "o", "--adafactor"])[2].optimizer == "adafactor"
    assert parse_args(["--output_dir", "o", "--optimizer", "lamb"])[2].optimizer == "lamb"


def test_data_config_carries_every_field_and_the_seed():
    changed = {"train_file": "a.txt", "validation_file": "b.txt", "dataset_name": "tfds:x",
               "dataset_config_name": "c", "train_ref_file": "r1", "validation_ref_file": "r2",
               "validation_split_percentage": "7", "text_column": "body",
               "shuffle_buffer_size": "11", "max_seq_length": "64", "line_by_line": "true",
               "chinese_word_segmentation": "jieba", "mlm_probability": "0.2",
               "max_predictions_per_seq": "9", "mask_replace_prob": "0.7",
               "random_replace_prob": "0.2", "whole_word_masking": "true",
               "max_eval_samples": "13", "invalid_utf8": "replace",
               "read_block_bytes": "4096", "blocks_mixed": "5"}
    # A mixture replaces the single-source data flags, so its fields are set in a second run.
    mixture = {"train_mixture": "a=x.txt,b=y.txt", "validation_mixture": "a=v.txt",
               "mixture_temperature": "2.0", "mixture_sizes_from": "lines"}
    assert set(changed) | set(mixture) == (
        {f.name for f in dataclasses.fields(DataConfig)} - {"seed"})
    for fields in (changed, {**mixture, "max_eval_samples": "13"}):
        argv = ["--output_dir", "o", "--seed", "3", "--max_steps", "5"]
        for name, value in fields.items():
            argv += [f"--{name}", value]
        _, data_args, training_args = parse_args(argv)
        config = data_config(data_args, training_args)
        assert config.seed == 3
        for name, value in fields.items():
            assert str(getattr(config, name)).lower() == value, name


def test_step_options_are_flags_and_checked_where_defined(capsys):
    training_args = parse_args(["--output_dir", "o", "--gradient_accumulation_steps", "4",
                                "--label_smoothing", "0.1", "--full_mlm_head",
                                "--skip_nonfinite_updates"])[2]
    assert StepOptions.from_args(training_args) == StepOptions(
        gradient_accumulation_steps=4, label_smoothing=0.1, full_mlm_head=True,
        skip_nonfinite_updates=True)
    with pytest.raises(InputError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        StepOptions(label_smoothing=1.0)
    assert "gradient_accumulation_steps must be > 0, got 0" in error_of(
        ["--output_dir", "o", "--gradient_accumulation_steps", "0"], capsys)


def test_hparams_are_flat_and_hide_tokens():
    flat = hparams(*parse_args(RUN_MLM_FLAX_COMMAND))
    assert flat["hub_token"] == "<hidden>" and flat["token"] is None
    assert flat["learning_rate"] == 3e-4 and flat["model_type"] == "roberta"


def test_json_config_with_flags_on_top(tmp_path):
    """The file's values, then the flags after it: a flag wins over the same key in the file."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": "o", "max_steps": 100, "learning_rate": 1e-3,
                                "do_train": True, "seed": 7}))
    _, _, training_args = parse_args([str(path), "--max_steps", "5", "--do_train", "false"])
    assert training_args.max_steps == 5 and not training_args.do_train  # the flags
    assert training_args.learning_rate == 1e-3 and training_args.seed == 7  # the file
    assert training_args.output_dir == "o"


def test_dashed_spelling_and_the_seed_era_batch_flag(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, _, training_args = parse_args(["--output-dir", "o", "--train_batch_size", "32",
                                          "--max-steps=9"])
    assert training_args.per_device_train_batch_size == 32 and training_args.max_steps == 9
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["--train_batch_size is read as --per_device_train_batch_size"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"output_dir": "o", "train_batch_size": 4}))
    assert parse_args([str(path)])[2].per_device_train_batch_size == 4


def help_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_is_grouped_with_one_spelling_and_one_default_per_flag(capsys):
    text = help_text(capsys)
    sections = [line[:-1] for line in text.splitlines() if line.endswith(":")
                and not line.startswith(" ")]
    assert sections[sections.index("options"):][:8] == [
        "options", "model", "data", "masking", "training", "evaluation and logging",
        "output and checkpoints", "parallelism and multi-host"], sections
    flags = re.findall(r"^  (--\w+)", text, re.MULTILINE)
    fields = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    assert sorted(flags) == sorted(f"--{name}" for name in fields)
    assert not re.search(r"--\w+-\w", text)  # no dashed second spelling
    for entry in re.split(r"\n  --", text):
        assert entry.count("default") <= 1, entry
    assert "(default: 128)" in text and "(default: 'constant * linear_warmup * linear_decay')" \
        in " ".join(text.split())
    assert "bert, roberta, xlm-roberta" in " ".join(text.split())
    assert "python train.py CONFIG.json [--flag VALUE ...]" in text


def test_sections_name_real_fields():
    fields = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    for names in SECTION_FIELDS.values():
        assert set(names) <= fields


def test_help_loads_no_tensorflow_jax_or_transformers():
    """`python train.py --help` (the real entry point) prints its help without the heavy imports.

    Python's -X importtime lists every module imported, on stderr.
    """
    result = subprocess.run([sys.executable, "-X", "importtime", "train.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert "--max_seq_length" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "trainer" in imported and "model" in imported  # the listing works
    assert not imported & {"tensorflow", "jax", "transformers", "flax", "torch"}, imported


# Command-line mistakes of this module, as docs/bad-input.md shows them (the program: train.py).
BOOLEAN_VALUE = ("train.py: error: argument --do_train: expected true or false, got 'maybe' "
                 "(see --help)")
CONFIG_LATER = ("train.py: error: config.json: a JSON config file comes first: train.py "
                "CONFIG.json [--flag VALUE ...] (see --help)")


def test_command_line_mistakes_are_one_documented_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert error_of(["--output_dir", "o", "--do_train", "maybe"], capsys).strip() == BOOLEAN_VALUE
    assert error_of(["--max_steps", "5", "config.json"], capsys).strip() == CONFIG_LATER
    with open(os.path.join(ROOT, "docs", "bad-input.md"), encoding="utf-8") as f:
        table = f.read()
    assert f"`{BOOLEAN_VALUE}`" in table and f"`{CONFIG_LATER}`" in table
MIXTURE = "wiki=data/wiki/*.txt:0.6,books[body]=gs://b/books/*.jsonl:0.4"


def test_mixture_flags_and_the_json_list_form_give_the_same_sources(tmp_path):
    from pipeline.mixture_spec import parse_mixture

    flags = ["--output_dir", "o", "--max_steps", "10", "--train_mixture", MIXTURE]
    from_flags = parse_args(flags)[1]
    listed = [{"name": "wiki", "train_file": "data/wiki/*.txt", "weight": 0.6},
              {"name": "books", "train_file": "gs://b/books/*.jsonl", "text_column": "body",
               "weight": 0.4}]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"output_dir": "o", "max_steps": 10, "train_mixture": listed}))
    from_json = parse_args([str(path)])[1]
    assert parse_mixture(from_json.train_mixture) == parse_mixture(from_flags.train_mixture)
    assert hparams(*parse_args(flags))["train_mixture"] == MIXTURE


@pytest.mark.parametrize("argv, message", [
    (["--train_mixture", "wiki=a.txt:0.6,books=b.txt"],
     "error: train_mixture: source 'books': weight: missing, while 'wiki' has one: "
     "weight every source, or none (drawn in proportion to size), or set mixture_temperature "
     "(see --help)"),
    (["--train_mixture", "wiki=a.txt", "--train_file", "b.txt"],
     "train_mixture replaces train_file: give each source's data in the mixture"),
    (["--train_mixture", "wiki=a.txt,wiki=b.txt"],
     "train_mixture: source 'wiki': name: used twice (again by source 2)"),
    (["--train_mixture", "a b=a.txt"], "train_mixture: source 'a b': name: expected 1 to 64"),
    (["--train_mixture", "a=x.txt:-1"], "train_mixture: source 'a': weight: expected a number > 0"),
    (["--train_mixture", '[{"name": "a", "train_fle": "x.txt"}]'],
     "train_mixture: source 'a': train_fle: unknown field; did you mean 'train_file'?"),
    (["--train_mixture", "a=x.txt:1,b=y.txt:1", "--mixture_temperature", "3"],
     "mixture_temperature: every source of the mixture has a weight"),
    (["--mixture_temperature", "3", "--train_file", "x.txt"],
     "mixture_temperature applies to a train_mixture, which is not set"),
    (["--train_mixture", "a=x.txt", "--mixture_sizes_from", "words"],
     "mixture_sizes_from must be one of bytes, lines; got 'words'"),
    (["--validation_mixture", "a=x.txt", "--validation_file", "v.txt"],
     "validation_mixture replaces validation_file: drop one"),
    (["--validation_mixture", '[{"name": "a", "train_file": "x.txt", "validation_file": "v"}]'],
     "validation_mixture: source 'a': validation_file: not used here"),
])
def test_mixture_mistakes_are_one_line_naming_the_field(argv, message, capsys):
    assert message in error_of(["--output_dir", "o", "--max_steps", "5", *argv], capsys)


def test_a_training_mixture_needs_max_steps(capsys):
    err = error_of(["--output_dir", "o", "--train_mixture", "a=x.txt"], capsys)
    assert "train_mixture needs max_steps: each source repeats on its own" in err
    assert parse_args(["--output_dir", "o", "--do_eval", "--train_mixture", "a=x.txt"])


def test_the_example_mixture_config_parses_with_refs_on_the_chinese_side():
    from pipeline.mixture_spec import parse_mixture

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                        "mixture-en-zh.json")
    _, data_args, training_args = parse_args([path])
    en, zh = parse_mixture(data_args.train_mixture)
    assert (en.name, zh.name) == ("en", "zh") and (en.weight, zh.weight) == (0.3, 0.7)
    assert zh.train_ref_file and zh.validation_ref_file and not en.train_ref_file
    assert data_args.whole_word_masking and training_args.max_steps > 0


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_shipped_config_parses(name):
    """The configs a user starts from are valid commands, phase 2's pointing at phase 1."""
    _, data_args, training_args = parse_args([os.path.join(ROOT, "configs", name)])
    assert data_args.max_predictions_per_seq > 0 and training_args.output_dir
    if name == "bert-base-phase2.json":
        with open(os.path.join(ROOT, "configs", "bert-base-pretraining.json"),
                  encoding="utf-8") as f:
            phase_1 = json.load(f)
        assert training_args.init_checkpoint == phase_1["output_dir"]
        assert data_args.max_seq_length == 512 and data_args.max_predictions_per_seq == 80
