"""The one exception type stages turn into a clear message and a non-zero exit."""


class PipelineError(Exception):
    """A user-facing error: what was wrong and what is allowed. Stages print it without a traceback."""
