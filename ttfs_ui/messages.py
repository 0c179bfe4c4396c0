"""Values the browser sends back: the timeline's clicks, channel picks and cursor, the drawing pad, chart and table
selections.

They come from the user's browser, which anyone can script, so none is trusted: each is read here against a
schema, one reader per key, before a page uses it. A bool is not an integer (Python says it is: {"cursor": true}
once went into a link as t=True), a float is not one even when whole, an index must lie inside what it indexes,
a required key must be there, and a key the component never sends refuses the message. No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Reader = Callable[[Any, str], Any]  # (value, its name in messages) -> the value, or raise BadMessage
SEQ = 100  # longest message id (the components send "<ms>-<random>")


class BadMessage(ValueError):
    """A value from the browser that does not fit its schema; the message names the field."""


def _show(value: Any) -> str:
    return f"{type(value).__name__} {repr(value)[:40]}"


def integer(lo: int, hi: int) -> Reader:
    """An int in [lo, hi]: not a bool, not a float, not a string."""

    def read(value: Any, name: str) -> int:
        if type(value) is not int:
            raise BadMessage(f"{name}: expected an integer, got {_show(value)}")
        if not lo <= value <= hi:
            raise BadMessage(f"{name}: {value} is not between {lo} and {hi}")
        return value

    return read


def text(longest: int) -> Reader:
    """A string of at most `longest` characters."""

    def read(value: Any, name: str) -> str:
        if not isinstance(value, str) or len(value) > longest:
            raise BadMessage(f"{name}: expected a text of at most {longest} characters, got {_show(value)}")
        return value

    return read


def one_of(options: Sequence[str]) -> Reader:
    def read(value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise BadMessage(f"{name}: {_show(value)} is not one of the {len(options)} expected")
        return value

    return read


def read(value: Any, what: str, required: Mapping[str, Reader], optional: Mapping[str, Reader] | None = None,
         *, others: bool = False) -> dict[str, Any]:
    """The one way a page reads a browser message: `value` must be an object holding every `required` key, each
    read by its reader; `optional` keys are read when present; any other key refuses it unless `others` (a
    message of Streamlit's own, such as a plotly point, whose extra keys the page never reads)."""
    optional = optional or {}
    if not isinstance(value, Mapping):
        raise BadMessage(f"{what}: expected an object, got {_show(value)}")
    unknown = sorted(str(k)[:40] for k in value if k not in required and k not in optional)
    if unknown and not others:
        raise BadMessage(f"{what}: unknown key {unknown[0]!r}")
    missing = [k for k in required if k not in value]
    if missing:
        raise BadMessage(f"{what}.{missing[0]}: missing")
    readers = {**required, **optional}
    return {k: readers[k](value[k], f"{what}.{k}") for k in readers if k in value}


def items(value: Any, what: str, most: int, reader: Reader) -> list[Any]:
    """A list of at most `most` values, each read by `reader`."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) > most:
        raise BadMessage(f"{what}: expected a list of at most {most}, got {_show(value)}")
    return [reader(v, f"{what}[{i}]") for i, v in enumerate(value)]


# --- the components' messages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimelineEvent:
    """What the raster's timeline sent: the cursor step it rests on, and a clicked neuron (layer name and flat
    index), or a channel picked on a layer's heat strip (layer name and channel), or neither."""

    seq: str
    cursor: int
    layer: str | None = None
    neuron: int | None = None
    channel: int | None = None
    reveal: int | None = None  # the browser's Reveal (1: spikes after the cursor hidden), for the link
    speed: int | None = None  # Play's speed, cursor steps per second, for the link


def timeline_event(value: Any, steps: int, neurons: Mapping[str, int],
                   channels: Mapping[str, int] | None = None, speeds: tuple[int, ...] = ()) -> TimelineEvent:
    """A timeline message ({cursor, seq} when the cursor rests; {layer, neuron, cursor, seq} on a click on a
    neuron; {layer, channel, cursor, seq} on a click on a heat strip; each may carry the browser's Reveal (0 or 1)
    and Play speed (`speeds`)) for a timeline of `steps` steps whose clickable layers have `neurons[name]`
    neurons, and whose heat strips have `channels[name]` channels (a channel may be picked only on a layer drawn
    as one)."""
    channels = channels or {}
    msg = read(value, "timeline", {"cursor": integer(0, steps), "seq": text(SEQ)},
               {"layer": one_of(list(neurons)), "neuron": integer(0, 2**62), "channel": integer(0, 2**62),
                "reveal": integer(0, 1), "speed": integer(1, 10**4)})
    if "speed" in msg and msg["speed"] not in speeds:
        raise BadMessage(f"timeline.speed: {msg['speed']} is not one of the speeds offered {list(speeds)}")
    if "neuron" in msg and "channel" in msg:
        raise BadMessage("timeline.channel: not with a neuron (a click is on a neuron or on a heat strip)")
    picked = "neuron" in msg or "channel" in msg
    if ("layer" in msg) != picked:
        raise BadMessage(f"timeline.{'neuron' if 'layer' in msg else 'layer'}: missing")
    if "neuron" in msg:
        integer(0, neurons[msg["layer"]] - 1)(msg["neuron"], "timeline.neuron")
    if "channel" in msg:
        if msg["layer"] not in channels:
            raise BadMessage(f"timeline.layer: {msg['layer'][:40]!r} is not drawn as a heat strip")
        integer(0, channels[msg["layer"]] - 1)(msg["channel"], "timeline.channel")
    return TimelineEvent(msg["seq"], msg["cursor"], msg.get("layer"), msg.get("neuron"), msg.get("channel"),
                         msg.get("reveal"), msg.get("speed"))


def drawing(value: Any, most_side: int) -> tuple[str, int]:
    """The drawing pad's message ({pixels: base64, size: side, seq}): the pixels' text and the side."""
    longest = 4 * (most_side * most_side + 2) // 3 + 4  # base64 of the largest pad
    msg = read(value, "drawing", {"pixels": text(longest), "size": integer(4, most_side)}, {"seq": text(SEQ)})
    return msg["pixels"], msg["size"]


def _any(value: Any, name: str) -> Any:
    return value


def chart_selection(selection: Any, n_points: int, most: int = 100_000) -> tuple[list[int], bool]:
    """A plotly chart's selection (Streamlit's event: {points: [{point_index, ...}], box, lasso}) on a chart of
    `n_points` points: the indices of the points picked (those without an index, of another trace, skipped), and
    whether a box or lasso picked them."""
    sel = read(selection, "selection", {}, {"points": _any, "box": _any, "lasso": _any}, others=True)
    index = integer(0, n_points - 1)
    out = []
    for i, p in enumerate(items(sel.get("points", []), "selection.points", most, _any)):
        p = read(p, f"selection.points[{i}]", {}, {"point_index": _any}, others=True)
        if p.get("point_index") is not None:
            out.append(index(p["point_index"], f"selection.points[{i}].point_index"))
    return out, bool(sel.get("box") or sel.get("lasso"))


def picked_row(rows: Any, n_rows: int) -> int | None:
    """The row chosen in a single-row table selection (Streamlit's `selection.rows`), or None."""
    chosen = items(rows, "selection.rows", 1, integer(0, n_rows - 1))
    return chosen[0] if chosen else None
