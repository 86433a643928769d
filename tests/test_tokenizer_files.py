"""The tokenizer read from its own files is the one AutoTokenizer builds, without PyTorch."""

import json
import os
import subprocess
import sys

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors, trainers
import transformers

from pipeline import tokenize, tokenizer_files
from pipeline.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = ["Return the sum of the arguments.", "", "  Spaces, PUNCTUATION; and [MASK] tokens!"]
ROLES = ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id", "unk_token_id",
         "bos_token_id", "eos_token_id")


def assert_same_tokenizer(ours, theirs):
    assert len(ours) == len(theirs)
    assert {role: getattr(ours, role) for role in ROLES} == {
        role: getattr(theirs, role) for role in ROLES}
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    ids = ours(LINES)["input_ids"]
    assert ids == theirs(LINES)["input_ids"]
    assert [ours.convert_ids_to_tokens(i) for i in ids] == [
        theirs.convert_ids_to_tokens(i) for i in ids]
    ours_vocab, theirs_vocab = tokenize.vocabulary(ours), tokenize.vocabulary(theirs)
    assert (ours_vocab.is_special == theirs_vocab.is_special).all()
    assert (ours_vocab.is_continuation == theirs_vocab.is_continuation).all()


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, corpus_file):
    """A byte-level BPE tokenizer with RoBERTa's special tokens, saved as transformers saves it."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train([str(corpus_file)], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path = tmp_path_factory.mktemp("roberta_tokenizer")
    transformers.RobertaTokenizerFast(tokenizer_object=backend).save_pretrained(path)
    return path


def test_a_bert_tokenizer_is_the_one_autotokenizer_builds(tokenizer_dir):
    ours = tokenizer_files.load_tokenizer(tokenizer_dir)
    assert_same_tokenizer(ours, transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    assert ours.name_or_path == str(tokenizer_dir)


def test_a_roberta_tokenizer_is_the_one_autotokenizer_builds(roberta_dir):
    ours = tokenizer_files.load_tokenizer(roberta_dir)
    assert_same_tokenizer(ours, transformers.AutoTokenizer.from_pretrained(str(roberta_dir)))
    assert (ours.cls_token, ours.mask_token, ours.eos_token) == ("<s>", "<mask>", "</s>")


def test_roles_a_config_leaves_unsaid_take_the_classes_tokens(tmp_path, tokenizer_dir):
    """Old hub repositories (bert-base-uncased) name no special tokens: their class did."""
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    ours = tokenizer_files.load_tokenizer(tmp_path)
    assert_same_tokenizer(ours, transformers.AutoTokenizer.from_pretrained(str(tmp_path)))
    assert ours.mask_token == "[MASK]" and ours.bos_token is None


def test_a_special_tokens_map_names_roles_the_config_does_not(tmp_path, tokenizer_dir):
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"mask_token": {"content": "[UNK]", "special": True}, "cls_token": "[SEP]"}))
    ours = tokenizer_files.load_tokenizer(tmp_path)
    assert (ours.mask_token, ours.cls_token, ours.sep_token) == ("[UNK]", "[SEP]", "[SEP]")


def test_a_broken_file_is_one_error_naming_it(tmp_path, tokenizer_dir):
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"mask_token": "[MASK]",\n  oops}')
    with pytest.raises(InputError, match=r"tokenizer_config.json: line 2: invalid JSON"):
        tokenizer_files.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(InputError, match=r"tokenizer.json: not a tokenizer.json that the "):
        tokenizer_files.load_tokenizer(tmp_path)


def hub_cache(cache, repo_id, files_from):
    """A Hugging Face hub cache holding repo_id's tokenizer files, as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (snapshot / name).write_bytes((files_from / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_name_loads_from_the_cache_and_no_torch_is_imported(tmp_path, tokenizer_dir):
    """A fresh process, offline, with torch installed: the hub name resolves, torch stays out."""
    hub_cache(tmp_path / "hub", "some-org/bert-tokenizer", tokenizer_dir)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    script = ("import sys; from pipeline import tokenizer_files; "
              "t = tokenizer_files.load_tokenizer('some-org/bert-tokenizer'); "
              "print(len(t), t.mask_token_id, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert result.stdout.split() == [str(len(expected)), str(expected.mask_token_id), "False"]


def test_saving_writes_the_files_it_was_read_from(tmp_path, tokenizer_dir):
    """The export names the tokenizer's own class, which transformers 4 and 5 both load."""
    tokenizer_files.save_tokenizer(tokenizer_files.load_tokenizer(tokenizer_dir), tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(tokenizer_dir))
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())[
        "tokenizer_class"] == "BertTokenizer"
