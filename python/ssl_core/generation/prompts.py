"""Prompts in, token rows out: the forms a batch of prompts may take, and the
output that keeps the caller's layout."""

import numpy as np


class Prompts:
    """A batch of prompts as the rows of token ids they hold.

    input_ids: one prompt (a 1-D integer array or list), a list of prompts of
        any lengths, or an integer array (B, T) whose padding
        ``attention_mask`` (B, T) marks with zeros; each row's tokens must be
        one run (left or right padding).
    context: the model's context window; max_new_tokens: tokens to be added.
    truncate: keep a too-long prompt's last tokens instead of raising.

    ``rows`` is a list of int64 arrays, the prompts' tokens without padding.
    """

    def __init__(self, input_ids, attention_mask, context, max_new_tokens, vocab_size, truncate=False):
        self.single = False
        if isinstance(input_ids, np.ndarray):
            if input_ids.dtype.kind not in "iu":
                raise TypeError(f"input_ids must hold integers, got an array of {input_ids.dtype}")
            if input_ids.ndim == 1:
                self.single, input_ids = True, input_ids[None]
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (T,) or (B, T), got shape {input_ids.shape}")
            self.padded = input_ids
            rows = [ids[keep] for ids, keep in zip(input_ids, self._mask(attention_mask, input_ids.shape))]
        elif isinstance(input_ids, (list, tuple)):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with an input_ids array; a list of prompts needs none")
            self.single = all(isinstance(t, (int, np.integer)) for t in input_ids) and len(input_ids) > 0
            rows = [input_ids] if self.single else list(input_ids)
            self.padded = None
        else:
            raise TypeError(f"input_ids must be a numpy array or a list of token ids, got {type(input_ids).__name__}")
        if not rows:
            raise ValueError("input_ids holds no prompt")
        self.rows = [self._row(r, i, vocab_size) for i, r in enumerate(rows)]
        limit = context - max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                             f"context window of {context} positions")
        for i, row in enumerate(self.rows):
            if len(row) > limit:
                if not truncate:
                    raise ValueError(f"prompt {i} has {len(row)} tokens; with max_new_tokens={max_new_tokens} the "
                                     f"context window of {context} positions leaves room for {limit}. Shorten "
                                     f"it, lower max_new_tokens, or pass truncate=True to keep its last {limit}")
                self.rows[i] = row[-limit:]
                self.padded = None  # the caller's layout no longer holds the prompt: rows are returned instead
        self.lengths = np.array([len(r) for r in self.rows], np.int64)

    @staticmethod
    def _mask(attention_mask, shape):
        if attention_mask is None:
            return np.ones(shape, bool)
        if not isinstance(attention_mask, np.ndarray) or attention_mask.shape != shape:
            raise ValueError(f"attention_mask must be an array of the shape of input_ids {shape}")
        keep = attention_mask != 0
        for i, row in enumerate(keep):
            marked = np.flatnonzero(row)
            if marked.size and marked[-1] - marked[0] + 1 != marked.size:
                raise ValueError(f"attention_mask row {i} marks tokens with gaps; each row's tokens must be one "
                                 "run (left or right padding)")
        return keep

    @staticmethod
    def _row(row, index, vocab_size):
        row = np.asarray(row)
        if row.dtype.kind not in "iu" and row.size:
            raise TypeError(f"prompt {index} must hold integer token ids, got {row.dtype}")
        row = row.astype(np.int64).reshape(-1)
        if row.size == 0:
            raise ValueError(f"prompt {index} is empty; a GPT needs at least one token to condition on "
                             "(e.g. its end-of-text token)")
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(f"prompt {index} holds token id {int(row[(row < 0) | (row >= vocab_size)][0])}, "
                             f"outside the vocabulary [0, {vocab_size})")
        return row

    def right_padded(self, pad=0):
        """(ids (B, T) right-padded with ``pad``, lengths (B,))."""
        ids = np.full((len(self.rows), int(self.lengths.max())), pad, np.int64)
        for i, row in enumerate(self.rows):
            ids[i, :len(row)] = row
        return ids, self.lengths

    def output(self, continuations, pad, per_prompt=1):
        """Prompts followed by their continuations, padded with ``pad``.

        continuations: per_prompt lists of new tokens for each prompt, in order.
        An input array keeps its layout (its padded prompt columns, then the
        new tokens); a list of prompts, or a truncated prompt, gives
        right-padded rows. A single prompt
        given as a 1-D array or list gives (T_out,) when per_prompt is 1.
        """
        width = max(len(c) for c in continuations)
        if self.padded is not None:
            head = np.repeat(self.padded.astype(np.int64), per_prompt, axis=0)
            out = np.full((len(continuations), head.shape[1] + width), pad, np.int64)
            out[:, :head.shape[1]] = head
            for i, c in enumerate(continuations):
                out[i, head.shape[1]:head.shape[1] + len(c)] = c
        else:
            rows = [np.concatenate([self.rows[i // per_prompt], c]) for i, c in enumerate(continuations)]
            out = np.full((len(rows), max(len(r) for r in rows)), pad, np.int64)
            for i, row in enumerate(rows):
                out[i, :len(row)] = row
        return out[0] if self.single and per_prompt == 1 else out
