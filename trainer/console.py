"""The console: every line the trainer writes for a person, on standard output.

One channel, so that a log file holds the run's story in order and a terminal
shows it cleanly: messages, CLU's metric lines (monitoring.ConsoleWriter) and
the progress bars all go to standard output through here, and a line written
while a bar is redrawn in place on a terminal clears the bar first. Plain
lines without a logger's time and file prefix, because they are read, not
parsed. Standard error carries only what went wrong: the one `error:` line of
a failed run (or a bug's traceback) and libraries' warnings.
"""

import sys

_live = []  # the progress bar drawn in place on a terminal now, if any


def show(text: str):
    """Writes `text` (one line, or several) for a person, clearing a bar drawn in place."""
    for bar in list(_live):
        bar.clear()
    print(text, file=sys.stdout, flush=True)


def stream():
    """Where the console writes now (looked up at each use: tests capture it)."""
    return sys.stdout


def drawing(bar, live: bool):
    """A progress bar says whether it is drawn in place now, so that a line clears it."""
    if live and bar not in _live:
        _live.append(bar)
    elif not live and bar in _live:
        _live.remove(bar)
