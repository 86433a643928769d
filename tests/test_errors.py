"""A user's mistake is one `error:` line; anything else is a bug and keeps its traceback.

pipeline.errors.user_message tells them apart, here on real TensorFlow errors,
and `python train.py` itself is run with a function of the run made to fail.
"""

import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline import errors
import train_runs


def raised_inside_tf_data(error):
    """The TensorFlow error that `error`, raised in a tf.data Python call, reaches the caller as."""
    def fail(_):
        raise error
    dataset = tf.data.Dataset.range(1).map(lambda i: tf.numpy_function(fail, [i], tf.int64))
    with pytest.raises(tf.errors.OpError) as raised:
        list(dataset)
    return raised.value


@pytest.mark.parametrize("error,line", [
    (errors.InputError("a.txt: line 3: expected text\n(a second line)"),
     "a.txt: line 3: expected text (a second line)"),
    (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    (tf.errors.UnavailableError(None, None, "gs://b/a.txt: retries ran out"),
     "gs://b/a.txt: retries ran out"),
])
def test_a_users_error_is_one_line(error, line):
    assert errors.user_message(error) == line


def test_errors_raised_inside_tf_data_are_told_apart():
    assert errors.user_message(raised_inside_tf_data(
        errors.InputError("a.txt: line 3: bad"))) == "a.txt: line 3: bad"
    assert errors.user_message(raised_inside_tf_data(
        FileNotFoundError("a.txt is gone"))) == "FileNotFoundError: a.txt is gone"
    assert errors.user_message(raised_inside_tf_data(ValueError("a bug"))) is None
    assert errors.user_message(raised_inside_tf_data(TypeError("a bug"))) is None


def test_a_bug_is_no_users_error():
    assert errors.user_message(ValueError("a bug")) is None
    assert errors.user_message(TypeError("a bug")) is None
    assert errors.user_message(tf.errors.InvalidArgumentError(None, None, "a bug")) is None


# `python train.py CONFIG`, with the run's first function that reads output_dir raising `error`.
RUN_FAILING = """
import runpy, sys
import tensorflow as tf
from pipeline.errors import UserError
from trainer import run_dir

def fail(*args, **kwargs):
    raise {error}

run_dir.check_output_dir = fail
sys.argv = ["train.py", {config!r}]
runpy.run_path({train!r}, run_name="__main__")
"""


def run_failing(error, tmp_path, corpus_file, tokenizer_dir):
    """(exit code, standard error) of train.py run until `error` is raised in its set-up."""
    config = train_runs.write_config(
        tmp_path / "config.json", train_runs.tiny_config(corpus_file, tokenizer_dir, max_steps=2),
        tmp_path / "run")
    program = RUN_FAILING.format(error=error, config=config,
                                 train=f"{train_runs.ROOT}/train.py")
    result = subprocess.run([sys.executable, "-c", program], cwd=train_runs.ROOT,
                            capture_output=True, text=True, timeout=240, check=False)
    return result.returncode, result.stderr


@pytest.mark.parametrize("error,line", [
    pytest.param("UserError('output_dir x: a user error')", "error: output_dir x: a user error",
                 marks=pytest.mark.slow),
    pytest.param("tf.errors.UnavailableError(None, None, 'gs://b/run: retries ran out')",
                 "error: gs://b/run: retries ran out", marks=pytest.mark.slow),
])
def test_train_py_shows_a_users_error_as_one_line(error, line, tmp_path, corpus_file,
                                                  tokenizer_dir):
    code, stderr = run_failing(error, tmp_path, corpus_file, tokenizer_dir)
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [l for l in stderr.splitlines() if l.startswith("error")] == [line], stderr[-3000:]


@pytest.mark.parametrize("error,shown", [
    ("ValueError('a bug in a library')", "ValueError: a bug in a library"),
    pytest.param("tf.errors.InvalidArgumentError(None, None, 'a bug in a graph')",
                 "InvalidArgumentError: a bug in a graph", marks=pytest.mark.slow),
])
def test_train_py_shows_a_bugs_traceback(error, shown, tmp_path, corpus_file, tokenizer_dir):
    code, stderr = run_failing(error, tmp_path, corpus_file, tokenizer_dir)
    assert code == 1, stderr[-3000:]
    lines = stderr.splitlines()
    assert "Traceback (most recent call last):" in lines and lines[-1].endswith(shown), \
        stderr[-3000:]
    assert not [l for l in lines if l.startswith("error")], stderr[-3000:]
