"""Bad input through `train.py`: one clear error line, no traceback, output_dir untouched.

Each case runs the real entry point (`train.main`, in process) against an
output_dir that already holds a previous run, and checks the exact message
(paths shown as DATA/, TOK/ and OUT/, as in docs/bad-input.md), the exit
status, and that not one file of that run changed. One case runs as a real
subprocess whose bad line is met deep in training, to show what reaches a
terminal there.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import train
import train_runs
from pipeline.config import DataConfig
from pipeline.sources import line_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "bad-input.md")
TINY = train_runs.TINY_BERT
BAD_UTF8_LINE = 151  # 1-based line of text.txt's copy with invalid bytes
SHORT_LINE = "Open the file."  # line 5 of text.txt: a ref index past its tokens is out of range


def flags(tokenizer, train_file, output_dir, *extra, overrides=TINY):
    data = [] if train_file is None else ["--train_file", str(train_file)]  # None: a mixture
    return ["--model_type", "bert", "--config_overrides", overrides,
            "--tokenizer_name", str(tokenizer), *data,
            "--output_dir", str(output_dir), "--max_seq_length", "32",
            "--max_predictions_per_seq", "6", "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--shuffle_buffer_size", "100",
            "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2", "--do_train",
            *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus_file):
    """DATA/: the bad files, each beside good ones it differs from in one way."""
    path = tmp_path_factory.mktemp("data")
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:300]
    lines[4] = SHORT_LINE
    (path / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (path / "empty.txt").write_bytes(b"")
    (path / "blank.txt").write_text("\n  \n\t\n\n")
    raw = [line.encode() for line in lines]
    raw[BAD_UTF8_LINE - 1] = raw[BAD_UTF8_LINE - 1][:9] + b"\xe9t\xe9" + raw[BAD_UTF8_LINE - 1][9:]
    (path / "latin1.txt").write_bytes(b"\n".join(raw) + b"\n")
    records = [json.dumps({"text": line}) for line in lines]
    (path / "malformed.jsonl").write_text(
        "\n".join(records[:200] + ['{"text": "unterminated'] + records[201:]) + "\n")
    (path / "no_key.jsonl").write_text(
        "\n".join(records[:149] + [json.dumps({"body": "x"})] + records[150:]) + "\n")
    (path / "no_column.csv").write_text(
        "id,body\n" + "".join(f'{i},"{line}"\n' for i, line in enumerate(lines[:20])))
    (path / "short.ref").write_text("[]\n" * 299)
    (path / "range.ref").write_text("[]\n" * 4 + "[9]\n" + "[]\n" * 295)
    (path / "not_json.ref").write_text("[]\n" * 6 + "[3, 4\n" + "[]\n" * 293)
    (path / "model_dir").mkdir()
    (path / "model_dir" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (path / "one_line.txt").write_text(SHORT_LINE + "\n")
    (path / "no_newline.txt").write_bytes(b"words without a line break " * 350_000)  # 9.5 MB
    deep = records * 40  # read in blocks of 16 kB, whose seeded order meets the bad one late
    deep[1100] = '{"text": "unterminated'
    (path / "deep.jsonl").write_text("\n".join(deep) + "\n")
    return path


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory, tokenizer_dir, data):
    """A finished two-step run: the output_dir every error case must leave as it was.

    Its validation set, one short line, is smaller than one batch of 8 devices.
    """
    out = tmp_path_factory.mktemp("previous") / "run"
    train.main(flags(tokenizer_dir, data / "text.txt", out, "--do_eval",
                     "--validation_file", str(data / "one_line.txt")))
    assert (out / "checkpoints" / "2").is_dir() and (out / "run_args.json").is_file()
    return out


def snapshot(directory):
    """Every file under directory, with a hash of its bytes."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            full = os.path.join(parent, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, directory)] = hashlib.sha256(f.read()).hexdigest()
    return found


def run_main(argv, capsys, monkeypatch):
    """(exit status, the one stderr line) of train.main; fails on more lines or a traceback."""
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the program name in usage errors
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return exit_info.value.code, lines[0]


def generic(message, data, tokenizer, out):
    for path, name in ((data, "DATA"), (tokenizer, "TOK"), (out.resolve(), "OUT"), (out, "OUT")):
        message = message.replace(str(path), name)
    return message


# The mesh path's flags for the cases that run on a mesh (fsdp: sharded parameters).
MESH = ["--parallelism", "mesh", "--mesh_shape", "data=2,fsdp=4"]
UNSPLITTABLE = ["--global_train_batch_size", "50", "--gradient_accumulation_steps", "3"]
UNSPLIT = ("error: global_train_batch_size 50 cannot be split over 8 devices x 3 gradient "
           "accumulation steps: it must be a multiple of 24")
OTHER_SHAPE = ("error: checkpoint OUT/checkpoints/2: params/bert/embeddings/LayerNorm/bias has "
               "shape (32,), this model expects (48,): it was written for a different model "
               "configuration")

# (case, train_file, extra flags, exit status, the message with generic paths)
CASES = [
    ("missing file", "missing.txt", [], 1,
     "error: data file 'DATA/missing.txt' not found"),
    ("glob matching nothing", "shard-*.txt", [], 1,
     "error: glob pattern 'DATA/shard-*.txt' matched no files"),
    ("empty file", "empty.txt", [], 1,
     "error: DATA/empty.txt: not enough training text for one batch of 16 sequences of 32 "
     "tokens (the data is empty, only blank lines, or all held out for validation)"),
    ("only blank lines", "blank.txt", [], 1,
     "error: DATA/blank.txt: not enough training text for one batch of 16 sequences of 32 "
     "tokens (the data is empty, only blank lines, or all held out for validation)"),
    ("invalid UTF-8 (--invalid_utf8 error, the default)", "latin1.txt", [], 1,
     f"error: DATA/latin1.txt: line {BAD_UTF8_LINE}: invalid UTF-8; pass --invalid_utf8 "
     "replace to replace invalid bytes with U+FFFD"),
    ("malformed JSON line", "malformed.jsonl", [], 1,
     "error: DATA/malformed.jsonl: line 201: malformed JSON (Unterminated string starting "
     "at: line 1 column 10 (char 9))"),
    ("JSON line without the text column", "no_key.jsonl", [], 1,
     "error: DATA/no_key.jsonl: line 150: expected a JSON object with key 'text'"),
    ("text file without line breaks", "no_newline.txt", [], 1,
     "error: DATA/no_newline.txt: line 1 is longer than 8388608 bytes, the limit for one line; "
     "is this a text file with one example per line?"),
    ("CSV without the text column", "no_column.csv", [], 1,
     "error: DATA/no_column.csv: line 1: CSV header ['id', 'body'] has no text column 'text'"),
    ("ref file with the wrong line count", "text.txt", ["--train_ref_file", "DATA/short.ref"], 1,
     "error: reference file DATA/short.ref does not match text file DATA/text.txt: ref line "
     "300: missing; text line 300 (non-empty line 300) has no reference"),
    ("ref index out of range", "text.txt", ["--train_ref_file", "DATA/range.ref"], 1,
     "error: reference file DATA/range.ref does not match text file DATA/text.txt: ref line "
     "5: reference index 9 is outside the 4 tokens (indices 1..4, CLS at 0) of text line 5: "
     f"'{SHORT_LINE}'"),
    ("ref line that is not JSON", "text.txt", ["--train_ref_file", "DATA/not_json.ref"], 1,
     "error: reference file DATA/not_json.ref does not match text file DATA/text.txt: ref "
     "line 7: expected a JSON list of non-negative integers, got '[3, 4'"),
    ("tokenizer directory without a tokenizer", "text.txt",
     ["--tokenizer_name", "DATA/model_dir"], 1,
     "error: no tokenizer at 'DATA/model_dir': expected a directory with tokenizer.json (or a "
     "hub name); the directory holds config.json"),
    ("missing tokenizer directory", "text.txt", ["--tokenizer_name", "DATA/no_tokenizer"], 1,
     "error: no tokenizer at 'DATA/no_tokenizer': expected a directory with tokenizer.json (or "
     "a hub name); the directory does not exist"),
    ("tokenizer Hub name without a network", "text.txt",
     ["--tokenizer_name", "some-org/some-tokenizer"], 1,
     "error: no tokenizer at 'some-org/some-tokenizer': expected a directory with "
     "tokenizer.json (or a hub name); there is no such directory, and the Hugging Face Hub "
     "cannot be reached (no network)"),
    ("unknown model_type", "text.txt", ["--model_type", "gpt9"], 2,
     "train.py: error: model_type must be one of bert, roberta, xlm-roberta; got 'gpt9' "
     "(see --help)"),
    ("max_seq_length larger than the model's positions", "text.txt",
     ["--max_seq_length", "100"], 1,
     "error: max_seq_length 100 is larger than the model's 64 positions "
     "(max_position_embeddings)"),
    ("global batch that the devices cannot split", "text.txt", UNSPLITTABLE, 1, UNSPLIT),
    ("empty validation set", "text.txt", ["--do_eval", "--validation_file", "DATA/blank.txt"], 1,
     "error: the validation set is empty: DATA/blank.txt has no text"),
    ("empty held-out validation set", "text.txt",
     ["--do_eval", "--validation_split_percentage", "0"], 1,
     "error: the validation set is empty: no line of DATA/text.txt falls in the 0% held out "
     "for validation; set validation_file or a larger validation_split_percentage"),
    ("checkpoint of a different model shape", "text.txt", [], 1, OTHER_SHAPE),
    ("checkpoint of a different model shape, on a mesh", "text.txt", MESH, 1, OTHER_SHAPE),
    ("global batch that the devices cannot split, on a mesh", "text.txt", MESH + UNSPLITTABLE,
     1, UNSPLIT),
    ("mesh_shape that does not fit the devices", "text.txt",
     ["--parallelism", "mesh", "--mesh_shape", "data=3"], 1,
     "error: mesh_shape 'data=3' does not fit the 8 devices of this run: the sizes must "
     "multiply to 8 (use -1 for one axis to take the rest, e.g. 'data=-1,fsdp=4')"),
    ("malformed mesh_shape", "text.txt", ["--parallelism", "mesh", "--mesh_shape", "data:2"], 2,
     "train.py: error: mesh_shape 'data:2': expected comma-separated AXIS=SIZE with the axes "
     "data and fsdp at most once each and SIZE a positive integer or -1 (the rest of the "
     "devices), e.g. 'data=-1,fsdp=4' (see --help)"),
    ("mesh_shape without --parallelism mesh", "text.txt", ["--mesh_shape", "fsdp=8"], 2,
     "train.py: error: mesh_shape applies to --parallelism mesh only; add --parallelism mesh, "
     "or drop mesh_shape (see --help)"),
    ("mixture source with a missing file", None,
     ["--train_mixture", "good=DATA/text.txt,gone=DATA/missing.txt"], 1,
     "error: train_mixture: source gone: data file 'DATA/missing.txt' not found"),
    ("mixture source with only blank lines", None,
     ["--train_mixture", "good=DATA/text.txt:0.5,blank=DATA/blank.txt:0.5"], 1,
     "error: source blank (DATA/blank.txt): no example in an epoch of the share this host "
     "reads (the data is empty, only blank lines, too short for one example, or all held out "
     "for validation)"),
    ("mixture with some sources weighted", None,
     ["--train_mixture", "good=DATA/text.txt:0.5,other=DATA/text.txt"], 2,
     "train.py: error: train_mixture: source 'other': weight: missing, while 'good' has one: "
     "weight every source, or none (drawn in proportion to size), or set mixture_temperature "
     "(see --help)"),
    ("empty validation source of a mixture", None,
     ["--train_mixture", "good=DATA/text.txt", "--do_eval",
      "--validation_mixture", "good=DATA/text.txt:1,blank=DATA/blank.txt:1"], 1,
     "error: validation source blank: the validation set is empty: DATA/blank.txt has no "
     "text"),
    ("learning-rate schedule that is 0 at every step", "text.txt",
     ["--max_steps", "1", "--warmup_steps", "10"], 1,
     "error: lr_schedule 'constant * linear_warmup * linear_decay' (learning_rate 5e-05, "
     "warmup_steps 10) over 1 step(s) is 0 at every step: the run would train nothing"),
    ("learning-rate schedule that is 0 at every step of the epochs counted", "text.txt",
     ["--max_steps", "-1", "--num_train_epochs", "0.001", "--warmup_steps", "10"], 1,
     "error: lr_schedule 'constant * linear_warmup * linear_decay' (learning_rate 5e-05, "
     "warmup_steps 10) over 1 step(s) is 0 at every step: the run would train nothing"),
    ("learning rate beyond float32", "text.txt", ["--learning_rate", "1e39"], 1,
     "error: lr_schedule 'constant * linear_warmup * linear_decay' (learning_rate 1e+39, "
     "warmup_steps 0) over 2 step(s) is not finite at step 0"),
    ("resume with another batch per process", "text.txt",
     ["--per_device_train_batch_size", "1"], 1,
     "error: OUT/checkpoints/2/data was written with batches of 16 examples per process, this "
     "run's have 8: the input position cannot carry over. To resume on another number of "
     "devices, keep the batch: --global_train_batch_size 16"),
]


@pytest.mark.parametrize("case,train_file,extra,status,expected", CASES,
                         ids=[c[0] for c in CASES])
def test_one_clear_error_and_output_untouched(case, train_file, extra, status, expected, data,
                                              tokenizer_dir, previous_run, tmp_path, capsys,
                                              monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(previous_run, out)
    before = snapshot(out)
    extra = [e.replace("DATA/", f"{data}/") for e in extra]
    overrides = TINY.replace("hidden_size=32", "hidden_size=48") if "shape" in case else TINY
    argv = flags(tokenizer_dir, train_file and data / train_file, out, *extra,
                 overrides=overrides)
    code, message = run_main(argv, capsys, monkeypatch)
    assert (code, generic(message, data, tokenizer_dir, out)) == (status, expected)
    assert snapshot(out) == before


def test_every_case_is_in_the_table():
    with open(DOC, encoding="utf-8") as f:
        table = f.read()
    for case, _, _, _, expected in CASES:
        assert f"| {case} |" in table, case
        assert f"`{expected}`" in table, case


def test_invalid_utf8_replaced_when_asked(data):
    config = DataConfig(train_file=str(data / "latin1.txt"), invalid_utf8="replace",
                        validation_split_percentage=0)
    lines = [t.decode() for b in line_batches(config, "train") for t in b["text"].numpy()]
    assert len(lines) == 300 and "\ufffdt\ufffd" in lines[BAD_UTF8_LINE - 1]


def test_validation_set_smaller_than_one_batch_is_padded(previous_run):
    """One line of validation text on 8 devices: evaluated, the rest of the batch weighted 0."""
    results = json.loads((previous_run / "eval_results.json").read_text())
    assert results["step"] == 2
    assert results["eval_predicted_tokens"] == 1  # 15% of the line's 4 tokens, at least one


@pytest.mark.slow
def test_bad_line_deep_in_training_is_one_line_in_a_terminal(data, tokenizer_dir, tmp_path):
    """A real `python train.py`: the error surfaces mid-run, named, and the checkpoints stay."""
    out = tmp_path / "run"
    argv = flags(tokenizer_dir, data / "deep.jsonl", out, "--read_block_bytes", "16384",
                 "--blocks_mixed", "2")  # the bad block is met after about 190 steps
    argv[argv.index("--max_steps") + 1] = "1000"
    argv[argv.index("--save_steps") + 1] = "50"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {data}/deep.jsonl: line 1101: malformed JSON (Unterminated "
                      "string starting at: line 1 column 10 (char 9))"], result.stderr[-3000:]
    steps = sorted(int(s) for s in os.listdir(out / "checkpoints"))
    assert steps and steps[-1] >= 50  # trained past the first read batch before meeting it
