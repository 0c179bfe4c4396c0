"""Messages from the browser's components are read against a schema (`ttfs_ui.messages`): a bool is not an
integer, indices lie inside what they index, required keys are there and unknown ones refuse the message."""

from __future__ import annotations

import pytest

from ttfs_ui import messages
from ttfs_ui.messages import BadMessage, TimelineEvent

LAYERS = {"conv1": 100, "fc": 10}


def test_good_timeline_messages_are_read():
    assert messages.timeline_event({"cursor": 12, "seq": "c1"}, 40, LAYERS) == TimelineEvent("c1", 12)
    click = {"layer": "fc", "neuron": 9, "cursor": 40, "seq": "1-0.5"}
    assert messages.timeline_event(click, 40, LAYERS) == TimelineEvent("1-0.5", 40, "fc", 9)
    rest = {"cursor": 7, "reveal": 1, "speed": 20, "seq": "c2"}  # Reveal and Play's speed, for the page's link
    assert messages.timeline_event(rest, 40, LAYERS, speeds=(2, 20)) == TimelineEvent("c2", 7, reveal=1, speed=20)


@pytest.mark.parametrize("value, needle", [
    ({"cursor": True, "seq": "c1"}, "timeline.cursor: expected an integer, got bool True"),
    ({"cursor": 3.0, "seq": "c1"}, "timeline.cursor: expected an integer, got float 3.0"),
    ({"cursor": "3", "seq": "c1"}, "timeline.cursor: expected an integer, got str '3'"),
    ({"cursor": -1, "seq": "c1"}, "timeline.cursor: -1 is not between 0 and 40"),
    ({"cursor": 10**30, "seq": "c1"}, "timeline.cursor: 1000000000000000000000000000000 is not between 0 and 40"),
    ({"seq": "c1"}, "timeline.cursor: missing"),
    ({"cursor": 1}, "timeline.seq: missing"),
    ({"cursor": 1, "seq": "x" * 101}, "timeline.seq: expected a text of at most 100"),
    ({"cursor": 1, "seq": "c1", "admin": 1}, "timeline: unknown key 'admin'"),
    ({"cursor": 1, "seq": "c1", "layer": "fc"}, "timeline.neuron: missing"),
    ({"cursor": 1, "seq": "c1", "neuron": 3}, "timeline.layer: missing"),
    ({"cursor": 1, "seq": "c1", "layer": "nope", "neuron": 3}, "timeline.layer: str 'nope' is not one of the 2"),
    ({"cursor": 1, "seq": "c1", "layer": "fc", "neuron": 10}, "timeline.neuron: 10 is not between 0 and 9"),
    ({"cursor": 1, "seq": "c1", "layer": "fc", "neuron": False}, "timeline.neuron: expected an integer, got bool"),
    ([1, 2], "timeline: expected an object, got list"),
    ("cursor", "timeline: expected an object, got str"),
    ({"cursor": 1, "seq": "c1", "reveal": 2}, "timeline.reveal: 2 is not between 0 and 1"),
    ({"cursor": 1, "seq": "c1", "reveal": True}, "timeline.reveal: expected an integer, got bool"),
    ({"cursor": 1, "seq": "c1", "speed": 7}, "timeline.speed: 7 is not one of the speeds offered [2, 20]"),
    ({"cursor": 1, "seq": "c1", "speed": "fast"}, "timeline.speed: expected an integer, got str"),
])
def test_bad_timeline_messages_are_refused_naming_the_field(value, needle):
    with pytest.raises(BadMessage) as e:
        messages.timeline_event(value, 40, LAYERS, speeds=(2, 20))
    assert needle in str(e.value)


def test_a_drawing_message_is_typed():
    assert messages.drawing({"pixels": "AAAA", "size": 4, "seq": "1"}, 512) == ("AAAA", 4)
    for bad, needle in [({"pixels": "AAAA", "size": True}, "drawing.size: expected an integer, got bool"),
                        ({"pixels": "AAAA", "size": 4.0}, "drawing.size: expected an integer, got float"),
                        ({"pixels": 5, "size": 4}, "drawing.pixels: expected a text"),
                        ({"pixels": "A" * 400_000, "size": 512}, "drawing.pixels: expected a text of at most"),
                        ({"pixels": "AAAA", "size": 4, "x": 1}, "drawing: unknown key 'x'")]:
        with pytest.raises(BadMessage, match=needle):
            messages.drawing(bad, 512)


def test_chart_and_table_selections_are_bounded():
    points = [{"point_index": 3, "x": 1.0, "curve_number": 0}, {"curve_number": 1}]
    assert messages.chart_selection({"points": points, "box": [], "lasso": []}, 10) == ([3], False)
    assert messages.chart_selection({"points": [{"point_index": 0}], "box": [{"x": [0, 1]}]}, 10) == ([0], True)
    assert messages.chart_selection({}, 10) == ([], False)
    for bad, needle in [({"points": [{"point_index": -1}]}, r"points\[0\].point_index: -1 is not between 0 and 9"),
                        ({"points": [{"point_index": 10}]}, "10 is not between 0 and 9"),
                        ({"points": [{"point_index": True}]}, "expected an integer, got bool"),
                        ({"points": [{"point_index": 1.5}]}, "expected an integer, got float"),
                        ({"points": "abc"}, "selection.points: expected a list"),
                        ({"points": [7]}, r"selection.points\[0\]: expected an object")]:
        with pytest.raises(BadMessage, match=needle):
            messages.chart_selection(bad, 10)
    assert messages.picked_row([2], 5) == 2 and messages.picked_row([], 5) is None
    for bad in ([-1], [5], [True], [1, 2], ["1"], [1.0]):
        with pytest.raises(BadMessage, match="selection.rows"):
            messages.picked_row(bad, 5)
