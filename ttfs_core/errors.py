"""Errors raised at the library's boundary."""


class ConversionError(ValueError):
    """The model cannot be converted: names the node, its op and what is supported instead."""


class InputError(ValueError):
    """An input tensor does not fit the converted network (shape, dtype, NaN)."""
