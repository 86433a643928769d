"""The embedded corpus and the trained tokenizer that the rest of the suite builds on."""

import transformers

from pipeline import corpus


def test_corpus_has_one_paragraph_per_line(corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 5000
    assert all(line.strip() == line and line for line in lines)


def test_corpus_respects_max_bytes(tmp_path):
    path = tmp_path / "small.txt"
    lines = corpus.write_corpus(path, max_bytes=10_000)
    assert 0 < lines == len(path.read_text(encoding="utf-8").splitlines())
    assert path.stat().st_size <= 10_000


def test_tokenizer_round_trips_through_save_pretrained(tokenizer_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.is_fast
    assert len(tokenizer) == 2000
    ids = tokenizer("Return the sum of the arguments.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
