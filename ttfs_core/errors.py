"""Errors raised at the library's boundary."""


class ConversionError(ValueError):
    """The model cannot be converted: names the node, its op and what is supported instead.

    `node` is the fx node name of the captured op being captured or lowered when it was raised (None when the
    problem is not at one node: training mode, the input, the options), so a caller can mark it in the graph."""

    node: str | None = None
    stage: str | None = None  # the pass of `ttfs_core.passes` that raised it (set by `convert`)
    stages: object = None  # with `convert(..., stages=True)`: the stages it reached (`ttfs_core.passes.Stages`)


class InputError(ValueError):
    """An input tensor does not fit the converted network (shape, dtype, NaN)."""
