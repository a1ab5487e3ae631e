"""The start-up lines that scripts read the port and fingerprint from must reach the pipe whole:
stdout and the log share it when a supervisor merges them, and the log is written from other
threads."""

from __future__ import annotations

import io

from server import announce


class RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_announced_line_is_one_write_with_its_newline() -> None:
    stream = RecordingStream()
    announce("Vitrine server listening on 127.0.0.1:34423", stream)
    announce("fingerprint SHA256:abc", stream)
    assert stream.writes == [
        "Vitrine server listening on 127.0.0.1:34423\n",
        "fingerprint SHA256:abc\n",
    ]
