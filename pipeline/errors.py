"""The project's error for bad input data.

A ValueError subclass, so callers that already catch ValueError keep working,
while tests and the trainer can tell a user's data problem from a bug.
"""


class InputError(ValueError):
    """Input data or a data setting is wrong; the message names the file, line and expectation."""
