"""Extractive question answering: SQuAD questions cut into model windows, and
the best answer span read back from start/end scores.

Windows. A sequence is [CLS] question [SEP] context-piece [SEP] of at most
``seq_len`` tokens. A context longer than its room is cut into pieces of
``room = seq_len - question tokens - 3`` tokens; consecutive pieces share
``overlap`` tokens, so each piece starts ``step = room - overlap`` tokens
after the previous one (the last piece may be shorter). Questions longer than
``max_question_tokens`` are truncated first.

Training targets. A window whose context piece holds the whole (first) gold
answer is labelled with the answer's first and last token; any other window,
and every window of an unanswerable question, points at [CLS] (position 0),
as in BERT and Hugging Face's examples.

Prediction. In each window, every span of context tokens with start <= end
and at most ``max_answer_tokens`` tokens scores start + end; the best span
over all the question's windows is mapped back to its characters in the
context. With ``allow_no_answer`` (SQuAD 2.0) the answer is empty when the
[CLS] score (start + end at position 0, lowest over the windows) beats the
best span by more than ``null_threshold``.
"""

import numpy as np


def encode_squad(tokenizer, data, seq_len, overlap=64, max_question_tokens=64):
    """Window examples of a QuestionAnswering: dicts with input_ids,
    token_type_ids, start_positions, end_positions, and for prediction
    ``question`` (its index in data), ``offsets`` (T, 2) character spans in
    the context (-1 outside it)."""
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    backend = tokenizer.backend
    backend.no_padding()
    backend.no_truncation()
    questions = backend.encode_batch(data.questions, add_special_tokens=False)
    contexts = backend.encode_batch(data.contexts, add_special_tokens=False)
    examples = []
    for index, (question, context) in enumerate(zip(questions, contexts)):
        q_ids = question.ids[:max_question_tokens]
        room = seq_len - len(q_ids) - 3
        if room < 1 or room <= overlap:
            raise ValueError(f"seq_len {seq_len} leaves {room} context tokens per window after a question of "
                             f"{len(q_ids)} tokens; it must exceed overlap {overlap}")
        step = room - overlap
        spans = np.asarray(context.offsets, np.int64).reshape(-1, 2)
        answer = data.answers[index][0] if data.answers[index] else None
        for begin in range(0, max(len(context.ids) - overlap, 1), step):
            piece = slice(begin, min(begin + room, len(context.ids)))
            ids = [tokenizer.cls_id, *q_ids, tokenizer.sep_id, *context.ids[piece], tokenizer.sep_id]
            first = len(q_ids) + 2  # where the context piece starts in the window
            offsets = np.full((len(ids), 2), -1, np.int64)
            offsets[first:first + piece.stop - piece.start] = spans[piece]
            start = end = 0
            if answer is not None:
                a0, a1 = answer[1], answer[1] + len(answer[0])
                inside = np.flatnonzero((offsets[:, 0] >= 0) & (offsets[:, 1] > a0) & (offsets[:, 0] < a1))
                if len(inside) and offsets[inside[0], 0] <= a0 and offsets[inside[-1], 1] >= a1:
                    start, end = int(inside[0]), int(inside[-1])
            types = np.zeros(len(ids), np.int64)
            types[first:] = 1
            examples.append({"input_ids": np.asarray(ids, np.int64), "token_type_ids": types,
                             "start_positions": start, "end_positions": end, "question": index, "offsets": offsets})
            if piece.stop == len(context.ids):
                break
    return examples


def best_answers(windows, start_logits, end_logits, contexts, max_answer_tokens=30, allow_no_answer=False,
                 null_threshold=0.0):
    """The predicted answer text of each question. windows: the examples of
    encode_squad; start_logits, end_logits: one (T,) array per window;
    contexts: the questions' contexts."""
    best = {}  # question -> (score, text)
    null = {}  # question -> lowest [CLS] score over its windows
    for window, starts, ends in zip(windows, start_logits, end_logits):
        q, offsets = window["question"], window["offsets"]
        n = min(len(starts), len(offsets))
        valid = offsets[:n, 0] >= 0
        null[q] = min(null.get(q, np.inf), float(starts[0] + ends[0]))
        if not valid.any():
            continue
        s = np.where(valid, starts[:n], -np.inf)
        e = np.where(valid, ends[:n], -np.inf)
        scores = s[:, None] + e[None, :]
        i, j = np.indices(scores.shape)
        scores[(j < i) | (j - i + 1 > max_answer_tokens)] = -np.inf
        flat = int(np.argmax(scores))
        i, j = divmod(flat, n)
        score = float(scores[i, j])
        if np.isfinite(score) and score > best.get(q, (-np.inf, ""))[0]:
            best[q] = (score, contexts[q][offsets[i, 0]:offsets[j, 1]])
    answers = []
    for q in range(len(contexts)):
        score, text = best.get(q, (-np.inf, ""))
        if allow_no_answer and null.get(q, -np.inf) > score + null_threshold:
            text = ""
        answers.append(text)
    return answers
