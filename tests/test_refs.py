"""Chinese whole-word reference files (run_chinese_ref.py format) beside a text file."""

import gzip
import json

import pytest

from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline.sources import line_batches


def pairs(config, split="train", **kwargs):
    out = []
    for batch in line_batches(config, split, **kwargs):
        texts, refs = batch["text"].numpy(), batch["chinese_ref"].numpy()
        assert texts.shape == refs.shape
        out.extend((t.decode(), json.loads(r)) for t, r in zip(texts, refs))
    return out


@pytest.fixture
def aligned(tmp_path):
    """1000 non-blank lines (and some blank ones) with the ref [i, i + 1] for line i."""
    lines = [f"第{i}行 文本" for i in range(1000)]
    text = tmp_path / "zh.txt"
    text.write_text("".join(f"{line}\n" + ("\n \n" if i % 97 == 0 else "")
                            for i, line in enumerate(lines)), encoding="utf-8")
    ref = tmp_path / "zh.ref"
    ref.write_text("".join(f"[{i}, {i + 1}]\n" for i in range(len(lines))), encoding="utf-8")
    return text, ref, [(line, [i, i + 1]) for i, line in enumerate(lines)]


def test_refs_align_with_nonblank_lines(aligned):
    text, ref, expected = aligned
    config = DataConfig(train_file=str(text), train_ref_file=str(ref), validation_file=str(text))
    assert pairs(config, read_batch_size=64) == expected
    no_ref = next(iter(line_batches(config, "validation")))
    assert set(no_ref) == {"text"}


def test_refs_stay_aligned_when_shuffled_sharded_and_held_out(aligned):
    text, ref, expected = aligned
    config = DataConfig(train_file=str(text), train_ref_file=str(ref),
                        validation_split_percentage=20, shuffle_buffer_size=300)
    shuffled = pairs(config, shuffle=True, read_batch_size=50)
    held_out = pairs(config, "validation")
    assert sorted(shuffled + held_out) == sorted(expected)
    assert held_out and shuffled[:len(held_out)] != held_out
    hosts = [pairs(config, process_index=i, process_count=3, read_batch_size=40) for i in range(3)]
    assert sorted(sum(hosts, [])) == sorted(shuffled)


def test_validation_ref_file(aligned):
    text, ref, expected = aligned
    config = DataConfig(train_file=str(text), validation_file=str(text),
                        validation_ref_file=str(ref))
    assert pairs(config, "validation") == expected


@pytest.mark.parametrize("refs,line,what", [
    ("[1]\n[2]\n", 3, "missing; text line 4"),
    ("[1]\n[2]\n[3]\n[4]\n", 4, "text file has only 3 non-empty lines"),
    ("[1]\n[2\n[3]\n", 2, "expected a JSON list of non-negative integers"),
    ("[1]\n[2]\n[\"a\"]\n", 3, "expected a JSON list"),
    ("[1]\n[-2]\n[3]\n", 2, "non-negative"),
    ('{"a": 1}\n[2]\n[3]\n', 1, "expected a JSON list"),
    ("[1]\n[true]\n[3]\n", 2, "expected a JSON list"),
])
def test_ref_errors_name_both_files_and_line(tmp_path, refs, line, what):
    text = tmp_path / "t.txt"
    text.write_text("我\n\n喜欢\n你\n", encoding="utf-8")
    ref = tmp_path / "t.ref"
    ref.write_text(refs, encoding="utf-8")
    config = DataConfig(train_file=str(text), train_ref_file=str(ref))
    with pytest.raises(InputError) as error:
        line_batches(config, "train")
    message = str(error.value)
    assert str(text) in message and str(ref) in message
    assert f"ref line {line}:" in message and what in message


def test_ref_needs_one_text_file(tmp_path, aligned):
    text, ref, _ = aligned
    (tmp_path / "other.txt").write_text("x\n")
    config = DataConfig(train_file=f"{text},{tmp_path / 'other.txt'}",
                        train_ref_file=str(ref))
    with pytest.raises(InputError, match="needs exactly one .txt text file"):
        line_batches(config, "train")
    config = DataConfig(train_file=str(text), train_ref_file=str(tmp_path / "none.ref"))
    with pytest.raises(InputError, match="none.ref' .* not found"):
        line_batches(config, "train")


def test_gzipped_text_and_ref(tmp_path, aligned):
    text, ref, expected = aligned
    for path in (text, ref):
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(path.read_bytes())
    config = DataConfig(train_file=f"{text}.gz", train_ref_file=f"{ref}.gz",
                        validation_file=str(text))
    assert pairs(config, read_batch_size=100) == expected
