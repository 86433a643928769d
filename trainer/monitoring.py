"""What a person watching the run sees: TensorBoard scalars, console lines, a progress bar.

Nothing here reads a device value: the loop hands over metrics it already
fetched at logging steps, so the train step never waits for the console.
"""

import contextlib
import math
import time
from typing import Mapping, Optional

from absl import logging
from clu import metric_writers, periodic_actions
from clu.metric_writers import logging_writer
import jax

from trainer import console


def configure_console_logging():
    """Libraries' log lines (Orbax, TensorFlow, JAX) from WARNING up only, on standard error.

    The run's own lines, metric lines included, are console lines (trainer/console.py).
    """
    logging.set_verbosity(logging.WARNING)


class ConsoleWriter(logging_writer.LoggingWriter):
    """CLU's metric lines (`[step] name=value, ...`, as its LoggingWriter words them) here."""

    def write_scalars(self, step: int, scalars):
        values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in sorted(scalars.items())]
        console.show(f"[{step}] {', '.join(values)}")

    def flush(self):
        """Console lines are flushed as they are written."""


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """A one-line progress display: `label step/total [bar] pct | fields | rate | ETA`.

    On a terminal it redraws in place (at most a few times a second); in a log
    file it writes a line only when asked (`force`), so logs stay readable. The
    rate is measured from the first update, which excludes compilation.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int, *, start: int = 0, unit: str = "steps",
                 stream=None, enabled: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or console.stream()
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.fields: dict = {}
        self._start = start
        self._t0: Optional[float] = None
        self._last_draw = 0.0
        self._position = start

    def rate(self) -> float:
        if self._t0 is None or self._position <= self._start:
            return float("nan")
        return (self._position - self._start) / max(time.monotonic() - self._t0, 1e-9)

    def update(self, position: int, *, force: bool = False, **fields):
        """Moves to `position`; `fields` (e.g. loss=2.3) are shown until replaced."""
        if self._t0 is None:
            self._t0, self._start = time.monotonic(), position
        self._position = position
        self.fields.update(fields)
        now = time.monotonic()
        if not self.enabled or not (force or self.interactive and now - self._last_draw > 0.2):
            return
        self._last_draw = now
        line = self.render()
        if self.interactive:
            self.stream.write("\r" + line + "\x1b[K")
            console.drawing(self, True)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def render(self) -> str:
        done = min(self._position / self.total, 1.0) if self.total else 1.0
        filled = int(done * self.WIDTH)
        parts = [f"{self.label} {self._position}/{self.total} "
                 f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done:3.0f}%"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in self.fields.items()]
        rate = self.rate()
        if math.isfinite(rate):
            parts.append(f"{rate:.2f} {self.unit}/s")
            parts.append(f"ETA {format_duration((self.total - self._position) / rate)}")
        return " | ".join(parts)

    def clear(self):
        """Blanks the line on a terminal so that a log line can be written over it."""
        if self.interactive:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            console.drawing(self, False)

    def close(self):
        """Ends the line on a terminal, so what follows starts on a fresh one."""
        if self.interactive:
            self.update(self._position, force=True)
            self.stream.write("\n")
            self.stream.flush()
            console.drawing(self, False)


class StepProfile:
    """Traces the steps after `first_step` for TensorBoard's profile tab (LOGDIR/plugins/profile).

    JAX's trace without its Python tracer: it keeps the steps (their
    StepTraceAnnotation), the XLA ops and the host threads, not an event per
    Python call. The Python tracer is the part that reaches into every
    Python thread at start; with it, a CI run and 1 of about 100 local runs
    of the end-to-end test died of a segmentation fault at that start, with
    a checkpoint being written, and faulthandler's dump stopped at a thread
    state not yet started (CPython 3.11, jaxlib 0.10). It also slows the
    traced steps' host side.
    """

    def __init__(self, logdir: str, first_step: int, num_steps: int):
        self.logdir, self.first_step, self.last_step = logdir, first_step, first_step + num_steps
        self.running = False

    def __call__(self, step: int):
        if step == self.first_step:
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0
            try:
                jax.profiler.start_trace(self.logdir, profiler_options=options)
            except RuntimeError as error:  # another trace is running: training goes on without
                logging.warning("No profile of steps %d-%d: %s", step + 1, self.last_step, error)
                return
            self.running = True
        elif step == self.last_step and self.running:
            jax.profiler.stop_trace()
            self.running = False


class Monitor:
    """TensorBoard + console writer, progress report, optional profile, and the train bar.

    Only process 0 writes TensorBoard files and draws bars; the others show
    their metrics lines, as CLU's `just_logging` intends. The writer is
    synchronous: it runs only at logging steps, and its console line clears
    the redrawn bar first (trainer/console.py).
    """

    def __init__(self, logdir: str, *, total_steps: int, start_step: int, logging_steps: int,
                 tokens_per_step: int, hparams: Optional[Mapping] = None, profile_steps: int = 0):
        self.logdir = logdir
        self.is_chief = jax.process_index() == 0
        # The console gets the metric lines; TensorBoard (process 0) also the hyperparameters,
        # which as a console line would be kilobytes long (they are in run_args.json too).
        self._tensorboard = metric_writers.SummaryWriter(logdir) if self.is_chief else None
        writers = [ConsoleWriter()] + (
            [self._tensorboard] if self._tensorboard else [])
        self.writer = metric_writers.MultiWriter(writers)
        if self._tensorboard and hparams is not None and start_step == 0:
            self._tensorboard.write_hparams({k: _hparam_value(v) for k, v in hparams.items()})
        self.tokens_per_step = tokens_per_step
        self.total_steps = total_steps
        self.report = periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=self.writer, every_steps=logging_steps,
            every_secs=None)
        self.hooks = [self.report]
        if profile_steps and self.is_chief:
            # A few steps in, so that compilation stays out of the trace.
            warmup = max(min(10, total_steps - start_step - profile_steps), 1)
            self.hooks.append(StepProfile(logdir, start_step + warmup, profile_steps))
        self.bar = ProgressBar("train", total_steps, start=start_step, enabled=self.is_chief)
        self._mark = (start_step, time.monotonic())
        self._paused_s = 0.0  # time in timed blocks (eval, checkpoints) since the mark

    def step_done(self, step: int):
        """Called after every step is dispatched: cheap, reads no device value."""
        for hook in self.hooks:
            hook(step)
        self.bar.update(step)

    def write_train(self, step: int, metrics: Mapping[str, float]):
        """Writes train/<name> scalars plus training throughput since the previous call.

        The throughput leaves out the time spent in `timed` blocks (evaluation,
        checkpoints), so a window with an evaluation reports the training rate.
        """
        scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
        last_step, last_time = self._mark
        now = time.monotonic()
        if step > last_step:
            training_s = max(now - last_time - self._paused_s, 1e-9)
            scalars["train/tokens_per_sec"] = (step - last_step) * self.tokens_per_step / training_s
        self._mark = (step, now)
        self._paused_s = 0.0
        self.writer.write_scalars(step, scalars)
        self.bar.update(step, force=True, loss=float(metrics.get("loss", float("nan"))))

    def write_eval(self, step: int, metrics: Mapping[str, float]):
        self.writer.write_scalars(step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        self.writer.flush()

    @contextlib.contextmanager
    def timed(self, name: str):
        """Times a block that is not training (eval, checkpoint): reported apart, not in throughput."""
        start = time.monotonic()
        try:
            with self.report.timed(name):
                yield
        finally:
            self._paused_s += time.monotonic() - start

    @contextlib.contextmanager
    def eval_bar(self, num_batches: int):
        bar = ProgressBar("eval", num_batches, unit="batches",
                          enabled=self.is_chief and num_batches > 0)
        try:
            yield bar
        finally:
            bar.close()

    def close(self):
        self.bar.close()
        self.writer.flush()
        self.writer.close()


def _hparam_value(value):
    """TensorBoard hparams take numbers, strings and booleans only."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)
