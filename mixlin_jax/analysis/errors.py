"""The one error type of the analysis package."""


class AnalysisError(RuntimeError):
  """A workdir cannot be analysed (no config, no checkpoints, bad argument)."""
