"""Checks of a batch's arrays, and its attention mask in the form the kernels take."""

import numpy as np


def check_batch(input_ids, token_type_ids, attention_mask, max_positions):
    """Validated (input_ids, token_type_ids, masks): ``masks`` holds
    ``key_lengths`` (B,) when attention_mask is ones then zeros in every row
    (right padding, the fast path: padded keys are skipped), else a bool
    ``mask`` (B, 1, 1, T); {} without attention_mask."""
    ids = _integer_array(input_ids, "input_ids")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
    B, T = ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids must hold at least one token, got shape {ids.shape}")
    if T > max_positions:
        raise ValueError(f"input_ids has {T} positions, more than the model's {max_positions} "
                         f"(max_position_embeddings / n_positions)")
    types = None
    if token_type_ids is not None:
        types = _integer_array(token_type_ids, "token_type_ids")
        if types.shape != ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {ids.shape}, got {types.shape}")
    if attention_mask is None:
        return ids, types, {}
    keep = _integer_array(attention_mask, "attention_mask", allow_bool=True)
    if keep.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {ids.shape}, got {keep.shape}")
    keep = keep != 0
    lengths = keep.sum(axis=1)
    if (keep == (np.arange(T) < lengths[:, None])).all():
        return ids, types, {"key_lengths": lengths}
    return ids, types, {"mask": keep[:, None, None, :]}


def _integer_array(value, name, allow_bool=False):
    if not isinstance(value, np.ndarray) or not (value.dtype.kind in "iu" or (allow_bool and value.dtype == bool)):
        kind = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {kind}")
    return value
