"""When a row is done: a stop token, or a stop string in its decoded text."""

import numpy as np


class StopCondition:
    """Tells which continuations just ended.

    stop_token_ids: tokens that end a row. stop_strings: texts that end a row
    once its continuation's decoded text holds one; only the last few tokens
    are decoded each step (enough to hold the longest stop string), so the
    check costs the same at every length.
    """

    def __init__(self, stop_token_ids=(), stop_strings=(), tokenizer=None):
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the continuation; pass tokenizer=")
        self.stop_token_ids = np.array(stop_token_ids, np.int64)
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        # A token decodes to at least one character, or to part of one (byte-level BPE), so this many
        # tokens hold any stop string that ends at the last one.
        self._window = 4 * max((len(s) for s in stop_strings), default=0) + 1

    def ended(self, tokens, continuations):
        """Bool (N,): tokens (N,) are the newest tokens; continuations(i) gives
        row i's new tokens so far (a sequence of ints, the newest last)."""
        hit = np.isin(tokens, self.stop_token_ids)
        if self.stop_strings:
            for i in np.flatnonzero(~hit):
                text = self.tokenizer.decode(list(continuations(i)[-self._window:]))
                hit[i] = any(s in text for s in self.stop_strings)
        return hit


def cut_at_stop_string(text, stop_strings):
    """``text`` up to (not including) the first stop string in it."""
    ends = [text.find(s) for s in stop_strings]
    ends = [e for e in ends if e >= 0]
    return text[:min(ends)] if ends else text
