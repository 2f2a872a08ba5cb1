"""The pure output model behind the ``%%rexec`` widget (no kernel, no stack)."""

from __future__ import annotations

from rexec_magics.completion import cell_body_position
from rexec_magics.errors import RemoteCellError
from rexec_magics.outputs import OutputList, collapse_carriage_returns


def test_carriage_returns_rewrite_the_line():
    assert collapse_carriage_returns("10%\r20%\r30%") == "30%"
    assert collapse_carriage_returns("a\nb\rc\n") == "a\nc\n"
    assert collapse_carriage_returns("pending\r") == "pending\r"
    assert collapse_carriage_returns("\r") == ""


def test_stream_chunks_join_and_progress_updates_in_place():
    outputs = OutputList()
    for chunk in ["start\n", "\r 0%", "\r50%", "\r100%", "\n", "end\n"]:
        outputs.apply("stream", {"name": "stdout", "text": chunk})
    outputs.apply("stream", {"name": "stderr", "text": "warn\n"})
    assert outputs.outputs() == [
        {"output_type": "stream", "name": "stdout", "text": "start\n100%\nend\n"},
        {"output_type": "stream", "name": "stderr", "text": "warn\n"},
    ]


def test_display_updates_and_clear_output():
    outputs = OutputList()
    outputs.apply("display_data", {"data": {"text/plain": "a"}, "transient": {"display_id": "x"}})
    outputs.apply(
        "update_display_data", {"data": {"text/plain": "b"}, "transient": {"display_id": "x"}}
    )
    assert outputs.outputs() == [
        {"output_type": "display_data", "data": {"text/plain": "b"}, "metadata": {}}
    ]
    outputs.apply("clear_output", {"wait": True})
    assert len(outputs.outputs()) == 1  # wait: cleared only when the next output arrives
    outputs.apply("execute_result", {"data": {"text/plain": "3"}, "execution_count": 7})
    assert outputs.outputs() == [
        {
            "output_type": "execute_result",
            "data": {"text/plain": "3"},
            "metadata": {},
            "execution_count": 7,
        }
    ]
    outputs.apply("clear_output", {"wait": False})
    assert outputs.outputs() == []


def test_remote_cell_error_renders_only_the_remote_traceback():
    error = RemoteCellError(
        "KeyError", "'k'", ["Traceback (most recent call last):", "KeyError: 'k'"]
    )
    assert error._render_traceback_() == ["Traceback (most recent call last):", "KeyError: 'k'"]
    assert RemoteCellError("E", "v", [])._render_traceback_() == ["E: v"]


def test_completion_only_forwards_inside_a_rexec_cell_body():
    assert cell_body_position("%%rexec --quiet\nx = 1\nx.re", 2, 4) == ("x = 1\nx.re", 10)
    assert cell_body_position("%%rexec", 0, 7) == ("", -1)
    assert cell_body_position("%%time\nx", 1, 1) == ("", -1)
