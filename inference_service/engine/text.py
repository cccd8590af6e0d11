"""Turning generated ids into streamed text: incremental detokenization and stop sequences."""

from __future__ import annotations

from typing import Any

__all__ = ["TextStream"]

_INCOMPLETE = "\ufffd"  # what decoding half of a multi-byte character gives; wait for the next token


class TextStream:
    """The text of one generation so far. ``push`` returns each token's new text; a stop sequence ends it."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self.text = ""  # the decoded text so far (special tokens skipped)
        self.stopped = False

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decoded: str = self._tokenizer.decode(self._ids, skip_special_tokens=True)  # one list of ids: one string
        if decoded.endswith(_INCOMPLETE):
            return ""
        new = decoded[len(self.text) :]
        self.text = decoded
        for stop in self._stop:
            # Search only where a stop sequence could newly end, so earlier text is never re-cut.
            found = self.text.find(stop, max(0, len(self.text) - len(new) - len(stop) + 1))
            if found != -1:
                self.text = self.text[:found]
                self.stopped = True
                break
        return new
