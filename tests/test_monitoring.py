"""Monitoring: TensorBoard scalars (read back with TensorBoard's reader), progress bar, console."""

import io
import logging as py_logging
import pathlib
import time

import jax
import jax.numpy as jnp
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from trainer import console, monitoring


def read_scalars(logdir):
    """{tag: {step: value}} from TensorBoard event files (TF2 summaries are tensor events)."""
    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
            for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def profile_traces(logdir):
    """The profiler's trace files under a TensorBoard log directory (its profile tab's)."""
    return list(pathlib.Path(logdir).glob("plugins/profile/*/*.xplane.pb"))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_in_a_log_writes_only_forced_lines():
    stream = io.StringIO()
    bar = monitoring.ProgressBar("train", 10, stream=stream)
    bar.update(1)
    bar.update(2)
    assert stream.getvalue() == ""
    bar.update(5, force=True, loss=1.5)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("train 5/10 [") and " 50%" in line
    assert "loss 1.5" in line and "steps/s" in line and "ETA" in line


def test_progress_bar_on_a_terminal_redraws_in_place():
    stream = Terminal()
    bar = monitoring.ProgressBar("eval", 4, unit="batches", stream=stream)
    bar.update(4, force=True)
    bar.close()
    out = stream.getvalue()
    assert out.startswith("\reval 4/4") and out.endswith("\n")
    assert "\n" not in out[:-1]


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (65, "1m05s"), (3725, "1h02m"),
                                          (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert monitoring.format_duration(seconds) == text


def make_monitor(logdir, start_step, profile_steps=0):
    return monitoring.Monitor(str(logdir), total_steps=20, start_step=start_step,
                              logging_steps=5, tokens_per_step=1000,
                              hparams={"learning_rate": 0.1, "model_type": "bert", "x": None},
                              profile_steps=profile_steps)


def test_monitor_writes_train_and_eval_scalars_to_tensorboard(tmp_path):
    monitor = make_monitor(tmp_path, 0)
    for step in range(1, 11):
        monitor.step_done(step)
        if step % 5 == 0:
            monitor.write_train(step, {"loss": 3.0 / step, "accuracy": 0.1})
    monitor.write_eval(10, {"loss": 0.5, "perplexity": 1.65})
    monitor.close()
    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == pytest.approx({5: 0.6, 10: 0.3})
    assert scalars["eval/loss"] == {10: 0.5}
    assert set(scalars["train/tokens_per_sec"]) == {5, 10}
    assert all(v > 0 for v in scalars["train/tokens_per_sec"].values())
    assert 10 in scalars["steps_per_sec"]  # ReportProgress


def test_hparams_are_written_once_per_run(tmp_path):
    make_monitor(tmp_path / "fresh", 0).close()
    make_monitor(tmp_path / "resumed", 10).close()
    assert plugin_tags(tmp_path / "fresh", "hparams")
    assert not plugin_tags(tmp_path / "resumed", "hparams")


def test_hparams_go_to_tensorboard_not_to_the_console(tmp_path, caplog):
    with caplog.at_level(py_logging.INFO, logger="absl"):
        make_monitor(tmp_path, 0).close()
    assert plugin_tags(tmp_path, "hparams")
    assert not [r for r in caplog.records if "Hyperparameters" in r.getMessage()]


def test_throughput_leaves_out_evaluation_and_checkpoint_time(tmp_path):
    """A logging window holding an evaluation reports the training rate, not a diluted one."""
    monitor = make_monitor(tmp_path, 0)
    for step in range(1, 11):
        time.sleep(0.02)  # a "train step"
        monitor.step_done(step)
        if step == 7:
            with monitor.timed("eval"):
                time.sleep(0.5)  # 2.5x the window's training time
        if step % 5 == 0:
            monitor.write_train(step, {"loss": 1.0})
    monitor.close()
    rates = read_scalars(tmp_path)["train/tokens_per_sec"]
    assert rates[10] > 0.6 * rates[5]  # counting the eval would give about 0.3


def plugin_tags(logdir, plugin):
    """Tags whose summaries belong to a TensorBoard plugin (e.g. "hparams")."""
    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return [tag for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == plugin]


def test_console_shows_metric_lines_but_not_library_chatter(capsys):
    """Metric lines are console lines (standard output); libraries log from WARNING up only."""
    monitoring.configure_console_logging()
    absl_logger = py_logging.getLogger("absl")  # every absl.logging call goes through it
    assert not absl_logger.isEnabledFor(py_logging.INFO)
    assert absl_logger.isEnabledFor(py_logging.WARNING)
    monitoring.ConsoleWriter().write_scalars(3, {"train/loss": 1.25, "train/steps": 3})
    assert capsys.readouterr().out == "[3] train/loss=1.25, train/steps=3\n"


def test_a_console_line_clears_a_bar_drawn_in_place(capsys):
    """On a terminal a line never lands in the middle of the redrawn bar."""
    stream = Terminal()
    bar = monitoring.ProgressBar("train", 10, stream=stream)
    bar.update(3, force=True)
    console.show("Evaluating at step 3")
    assert stream.getvalue().startswith("\rtrain 3/10") and stream.getvalue().endswith("\r\x1b[K")
    bar.close()
    console.show("done")  # a closed bar is left alone
    assert stream.getvalue().endswith("\n")
    assert capsys.readouterr().out == "Evaluating at step 3\ndone\n"


def test_profile_traces_its_steps_without_python_calls(tmp_path):
    monitor = make_monitor(tmp_path, 0, profile_steps=3)
    step_fn = jax.jit(lambda x: jnp.tanh(x) * 2)

    def python_call_in_the_loop(x):
        return step_fn(x).block_until_ready()

    for step in range(1, 21):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            python_call_in_the_loop(jnp.ones(8))
        monitor.step_done(step)
        traces = profile_traces(tmp_path)
        assert len(traces) == (step >= 13), f"after step {step}: {traces}"  # steps 11-13
    names = {event.name for plane in jax.profiler.ProfileData.from_file(str(traces[0])).planes
             for line in plane.lines for event in line.events}
    assert "train" in names, sorted(names)[:20]
    assert not [name for name in names if "python_call_in_the_loop" in name]


def test_a_profile_that_cannot_start_is_a_warning_not_the_end_of_the_run(tmp_path, caplog):
    monitor = make_monitor(tmp_path / "run", 0, profile_steps=3)
    jax.profiler.start_trace(str(tmp_path / "other"))  # someone else's trace is running
    try:
        for step in range(1, 21):
            monitor.step_done(step)
    finally:
        jax.profiler.stop_trace()
    assert "No profile of steps 11-13: Profile has already been started" in caplog.text
    assert not profile_traces(tmp_path / "run")
