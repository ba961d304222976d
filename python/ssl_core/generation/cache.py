"""The key/value cache of incremental decoding.

Each layer's keys and values are preallocated once for the whole generation,
(B, capacity, H, D) float32, in the (batch, seq, heads, head_dim) layout the
attention kernel reads, so a decoding step writes one position per row and
attends over a view of the cache: no reallocation, no concatenation, no copy.

Rows keep their own lengths. A batch of prompts of different lengths is
prefilled right-padded; row b's next token then goes to position lengths[b],
overwriting the padding's keys, and attention is limited to each row's own
keys. Positions therefore count from each prompt's first token, as they
would for that prompt alone.
"""

import numpy as np


class LayerCache:
    """One layer's keys and values: ``keys``, ``values`` (B, capacity, H, D)."""

    def __init__(self, batch, capacity, heads, head_dim):
        self.keys = np.empty((batch, capacity, heads, head_dim), np.float32)
        self.values = np.empty_like(self.keys)

    def write(self, keys, values, start):
        """Store keys, values (B, T, H, D) of the tokens at positions start[b]
        .. start[b] + T - 1 of each row; returns each row's end, start + T."""
        T = keys.shape[1]
        end = start + T
        if end.max() > self.keys.shape[1]:
            raise ValueError(f"the cache holds {self.keys.shape[1]} positions; writing {T} at "
                             f"{int(start.max())} would exceed it")
        if (start == start[0]).all():
            first = int(start[0])
            self.keys[:, first:first + T] = keys
            self.values[:, first:first + T] = values
        else:
            rows, positions = np.arange(len(start))[:, None], start[:, None] + np.arange(T)
            self.keys[rows, positions] = keys
            self.values[rows, positions] = values
        return end

    def view(self, length):
        """(keys, values) of the first ``length`` positions, views (B, length, H, D)."""
        return self.keys[:, :length], self.values[:, :length]

    def select(self, rows, length):
        """Keep, as rows 0..len(rows)-1, the first ``length`` positions of the
        given rows (beam search reorders and duplicates beams this way)."""
        self.keys[:len(rows), :length] = self.keys[rows, :length]
        self.values[:len(rows), :length] = self.values[rows, :length]


class KVCache:
    """The caches of all layers of a model and the length of each row.

    Args:
        model: a GPT (its config gives layers, heads and width).
        batch: rows.
        capacity: positions per row, at most the model's context window.
    """

    def __init__(self, model, batch, capacity):
        c = model.config
        if capacity > c.n_positions:
            raise ValueError(f"capacity {capacity} exceeds the model's context window n_positions={c.n_positions}")
        head_dim = c.n_embd // c.n_head
        self.layers = [LayerCache(batch, capacity, c.n_head, head_dim) for _ in range(c.n_layer)]
        self.lengths = np.zeros(batch, np.int64)
        self.capacity = capacity

    def select(self, rows):
        """Reorder (and duplicate) rows: row i becomes the old row rows[i]."""
        rows = np.asarray(rows)
        length = int(self.lengths[rows].max())
        for layer in self.layers:
            layer.select(rows, length)
        self.lengths[:len(rows)] = self.lengths[rows]

    def repeat(self, n):
        """Repeat each row n times in place (row i becomes rows i*n .. i*n + n - 1):
        one prefill then serves n samples or beams of a prompt. Returns self."""
        for layer in self.layers:
            layer.keys = np.repeat(layer.keys, n, axis=0)
            layer.values = np.repeat(layer.values, n, axis=0)
        self.lengths = np.repeat(self.lengths, n)
        return self
