"""The project's errors for what a user can fix: bad input data, settings, output folders.

UserError is their root: the trainer prints those as one line, and lets any
other exception (a bug) keep its traceback. It is a ValueError subclass, so
callers that already catch ValueError keep working.
"""

import builtins
import re


class UserError(ValueError):
    """Something the user can fix; the message says what and where, on one line."""


class InputError(UserError):
    """Input data or a data setting is wrong; the message names the file, line and expectation."""


# TensorFlow's errors from outside the program: storage or a network that failed (a gs://
# read whose retries ran out, a file gone, no permission, a full disk), and Python's OSErrors.
# By name: so they are known when an error raised inside a tf.data Python call (a
# numpy_function) reaches the caller as the text of another TensorFlow error.
_IO_ERROR_NAMES = {"UnavailableError", "NotFoundError", "PermissionDeniedError",
                   "DataLossError", "ResourceExhaustedError", "AbortedError",
                   "DeadlineExceededError"} | {
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, OSError)}

_TAG = "InputError: "
_TF_PREFIX = re.compile(r"^\{\{[^}]*\}\}\s*")  # "{{function_node ...}}" before the text
_TF_SUFFIX = re.compile(r"\s*(\[\[\{\{node .*|\[Op:.*)$")  # "[[{{node X}}]] [Op:Y]" after it
# "Error in user-defined function passed to X transformation with iterator: Y: " before the text
_PY_FUNCTION_PREFIX = re.compile(r"^Error in user-defined function passed to \S+ transformation "
                                 r"with iterator: \S+: ")
_TRACEBACK = "Traceback (most recent call last):"


def message_in(op_error_text):
    """The one line to show for a TensorFlow error met while reading input.

    An InputError raised inside tf.data reaches the caller as an OpError whose
    text holds "InputError: <message>" on one line: from a numpy_function
    ("...: InputError: msg" then its traceback) or from an assertion made by
    `formats` ("assertion failed: [InputError: msg]"); that message is
    returned. Any other error (a read that failed after its retries) gives
    its own text, joined into one line, without TensorFlow's node names or the
    Python traceback of the tf.data function that met it (a read of a gs://
    block that failed after its retries is such an error).
    """
    lines = op_error_text.splitlines()
    for line in lines:
        start = line.find(_TAG)
        if start >= 0:
            message = line[start + len(_TAG):]
            if line[:start].endswith("assertion failed: ["):
                message = message.removesuffix("]")
            return message
    traceback = [i for i, line in enumerate(lines) if line.strip() == _TRACEBACK]
    lines = lines[:traceback[0]] if traceback else lines
    text = " ".join(line.strip() for line in lines if line.strip())
    return _PY_FUNCTION_PREFIX.sub("", _TF_SUFFIX.sub("", _TF_PREFIX.sub("", text)))


def user_message(error):
    """The one line to show for an error the user can fix, or None for a bug (keep its traceback).

    A user's error is a UserError; an OSError (a full disk at export, say); or
    a TensorFlow error that carries an InputError raised inside tf.data, or
    that a failed read raised (storage or network: a gs:// read whose retries
    ran out, a file gone), itself or inside a tf.data Python call.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (the module stays light)

    if isinstance(error, UserError):
        return " ".join(str(error).splitlines())
    if isinstance(error, OSError):
        return str(error)
    if isinstance(error, tf.errors.OpError):
        message = message_in(error.message)
        raised_inside = message.split(":", 1)[0]
        if _TAG in error.message or {type(error).__name__, raised_inside} & _IO_ERROR_NAMES:
            return message
    return None
