"""The preview command: decoded examples with their predicted positions."""

import json
import os
import subprocess
import sys

from pipeline import preview

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_json_preview_shows_ids_labels_and_tokens(capsys, corpus_file, tokenizer_dir):
    preview.main(["--train_file", str(corpus_file), "--tokenizer", str(tokenizer_dir),
                  "--max_seq_length", "32", "--num_examples", "3", "--json",
                  "--whole_word_masking", "--shuffle_buffer_size", "100"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["tokens"]) == 32
        assert row["tokens"][0] == "[CLS]" and row["tokens"][-1] == "[SEP]"
        predicted = [i for i, label in enumerate(row["labels"]) if label != -100]
        assert len(predicted) == 5  # round(32 * 0.15)
        changed = [i for i, (a, b) in enumerate(zip(row["tokens"], row["original_tokens"]))
                   if a != b]
        assert set(changed) <= set(predicted) and changed


def test_text_preview_marks_predictions_with_their_originals(capsys, corpus_file,
                                                             tokenizer_dir):
    preview.main(["--train_file", str(corpus_file), "--tokenizer", str(tokenizer_dir),
                  "--line_by_line", "--max_seq_length", "24", "--num_examples", "2",
                  "--split", "validation"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].startswith("--- example 0:")
    assert "[CLS]" in out[1] and "{" in out[1]


def test_the_command_prints_examples_without_tensorflow_chatter(corpus_file, tokenizer_dir):
    """`python -m pipeline.preview` in a fresh environment: only what it was asked for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "XLA_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.preview", "--train_file", str(corpus_file),
         "--tokenizer", str(tokenizer_dir), "--max_seq_length", "24", "--num_examples", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.startswith("--- example 0:")
    assert result.stderr == ""


def test_a_mixture_preview_names_each_example_source(capsys, tmp_path, tokenizer_dir):
    for word, count in (("apple", 50), ("banana", 50)):
        (tmp_path / f"{word}.txt").write_text("".join(f"{word} {i}\n" for i in range(count)))
    mixture = f"a={tmp_path / 'apple.txt'}:1,b={tmp_path / 'banana.txt'}:1"
    preview.main(["--train_mixture", mixture, "--tokenizer", str(tokenizer_dir), "--json",
                  "--line_by_line", "--max_seq_length", "8", "--num_examples", "8"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 8 and {row["source"] for row in rows} == {"a", "b"}
    for row in rows:
        assert row["epoch"] == 0
        text = "".join(t.removeprefix("##") for t in row["original_tokens"][1:])
        assert text.startswith({"a": "apple", "b": "banana"}[row["source"]])
    preview.main(["--train_mixture", mixture, "--tokenizer", str(tokenizer_dir),
                  "--line_by_line", "--max_seq_length", "8", "--num_examples", "2",
                  "--split", "validation", "--validation_split_percentage", "20"])
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("---")]
    assert [h.split(":")[0] for h in headers] == [
        "--- example 0, source a", "--- example 1, source a", "--- example 2, source b",
        "--- example 3, source b"]
