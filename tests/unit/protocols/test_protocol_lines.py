"""The shared bounded line reader."""

from __future__ import annotations

from relay.protocols.lines import Line, LineReader


def _lines(reader: LineReader):
    found = []
    while True:
        line = reader.next_line()
        if line is None:
            return found
        found.append(line)


def test_crlf_and_bare_lf_lines():
    reader = LineReader(100)
    reader.feed(b"one\r\ntwo\nthree\r")
    assert _lines(reader) == [Line(b"one"), Line(b"two")]
    reader.feed(b"\n")
    assert _lines(reader) == [Line(b"three")]


def test_half_lines_wait_for_the_rest():
    reader = LineReader(100)
    for byte in b"NOOP":
        reader.feed(bytes([byte]))
        assert reader.next_line() is None
    reader.feed(b"\r\n")
    assert reader.next_line() == Line(b"NOOP")


def test_line_of_exactly_max_line_is_accepted():
    reader = LineReader(4)
    reader.feed(b"abcd\r")
    assert reader.next_line() is None  # the CR does not count
    reader.feed(b"\n")
    assert reader.next_line() == Line(b"abcd")


def test_over_long_line_is_reported_once_and_its_rest_dropped():
    reader = LineReader(4)
    reader.feed(b"abcdefgh")
    assert reader.next_line() == Line(b"abcd", too_long=True)
    reader.feed(b"ijkl" * 1000)
    assert reader.next_line() is None
    reader.feed(b"mno\r\nnext\r\n")
    assert _lines(reader) == [Line(b"next")]


def test_over_long_complete_line_in_one_chunk():
    reader = LineReader(4)
    reader.feed(b"abcdefgh\r\nok\r\n")
    assert _lines(reader) == [Line(b"abcd", too_long=True), Line(b"ok")]


def test_memory_stays_bounded_while_discarding():
    reader = LineReader(8)
    for _ in range(1000):
        reader.feed(b"x" * 100)
        reader.next_line()
    assert len(reader.take_buffered()) <= 100


def test_blocks_are_exact_and_may_hold_line_breaks():
    reader = LineReader(100)
    reader.feed(b"ab\r\n")
    assert reader.next_block(5) is None
    reader.feed(b"cdTAIL\r\n")
    assert reader.next_block(5) == b"ab\r\nc"
    assert reader.next_block(0) == b""
    assert _lines(reader) == [Line(b"dTAIL")]


def test_discard_skips_at_most_what_is_buffered():
    reader = LineReader(100)
    reader.feed(b"12345")
    assert reader.discard(3) == 3
    assert reader.discard(10) == 2
    assert reader.discard(10) == 0


def test_take_buffered_and_clear():
    reader = LineReader(100)
    reader.feed(b"partial line")
    assert reader.next_line() is None
    assert reader.take_buffered() == b"partial line"
    reader.feed(b"plaintext\r\n")
    reader.clear()
    assert reader.next_line() is None
