"""Shared fixtures: the embedded corpus and a WordPiece tokenizer trained on it.

The environment is set before TensorFlow or JAX is imported: 8 CPU devices
for pmap tests (compiled as train_runs.TEST_XLA_FLAGS says), no TensorFlow
start-up chatter, and one persistent compilation cache for the whole session
(every program, however quick to compile), which the in-process runs and
every train.py subprocess share: the tests run the same tiny model again and
again, and test resuming, not XLA. Tests of the cache itself set their own.
"""

import atexit
import collections
import os
import shutil
import tempfile

import train_runs  # (light: it imports neither TensorFlow nor JAX)

os.environ.setdefault("XLA_FLAGS", train_runs.xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlm-stream-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

from pipeline import corpus, inputs, tokenize, tokenizer_training  # noqa: E402

TEST_VOCAB_SIZE = 2000


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """The standard-library docstring corpus (about 1.7 MB, 15k lines)."""
    path = tmp_path_factory.mktemp("corpus") / "stdlib.txt"
    corpus.write_corpus(path)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_file):
    """A BERT WordPiece tokenizer trained on the corpus, saved in Hugging Face format."""
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer = tokenizer_training.train_wordpiece([corpus_file], vocab_size=TEST_VOCAB_SIZE)
    assert len(tokenizer) == TEST_VOCAB_SIZE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    """The test tokenizer, loaded as the trainer loads it."""
    return inputs.load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def vocab(tokenizer):
    """Its special ids and word-continuation table, as the pipeline sees them."""
    return tokenize.vocabulary(tokenizer)


def pytest_collection_modifyitems(items):
    """Modules with the most slow tests first: run on several workers, module by module
    (`make test`), the longest start first and the short ones fill in at the end."""
    slow = collections.Counter(item.module.__name__ for item in items
                               if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: each module's order
