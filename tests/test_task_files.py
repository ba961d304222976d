"""Reading downstream-task files: CSV/TSV/JSON Lines, CoNLL / CoNLL-U and
SQuAD, with bad records reported by file and line or skipped and counted."""

import json

import pytest

from ssl_core.data import CorpusError
from ssl_core.data.task_files import read_labelled_texts, read_squad, read_tagged_sentences


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_tsv_and_json_lines_give_the_same_records(tmp_path):
    rows = [("A fine film, truly.", "pos"), ('He said "no"\tand left.', "neg"), ("Meh", "neu")]
    csv_path = write(tmp_path / "a.csv", "text,label\n" + "".join(
        '"{}",{}\n'.format(t.replace('"', '""'), y) for t, y in rows))
    tsv_path = write(tmp_path / "a.tsv", "label\ttext\n" + "".join(
        '{}\t"{}"\n'.format(y, t.replace('"', '""')) for t, y in rows))
    jsonl_path = write(tmp_path / "a.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    for path in (csv_path, tsv_path, jsonl_path):
        data = read_labelled_texts(path)
        assert data.texts == [t for t, _ in rows] and data.labels == ["pos", "neg", "neu"]
        assert data.texts_b is None and data.skipped == 0


def test_pairs_custom_columns_and_regression(tmp_path):
    path = write(tmp_path / "sts.tsv", "s1\ts2\tscore\nA man eats.\tA man is eating.\t4.6\nA cat.\tStocks fell.\t0\n")
    data = read_labelled_texts(path, text="s1", text_b="s2", label="score")
    assert data.texts_b == ["A man is eating.", "Stocks fell."] and data.labels == [4.6, 0.0]
    # Whole numbers are class ids unless a regression is asked for.
    path = write(tmp_path / "sst.csv", "text,label\ngood,1\nbad,0\n")
    assert read_labelled_texts(path).labels == ["1", "0"]
    assert read_labelled_texts(path, regression=True).labels == [1.0, 0.0]
    with pytest.raises(CorpusError, match="a regression needs numeric labels in 'label'"):
        read_labelled_texts(write(tmp_path / "w.csv", "text,label\ngood,pos\n"), regression=True)


def test_multi_label_files(tmp_path):
    path = write(tmp_path / "topics.jsonl", '{"text": "a", "label": ["sports", "news"]}\n{"text": "b", "label": []}\n')
    assert read_labelled_texts(path).labels == [["news", "sports"], []]
    path = write(tmp_path / "topics.csv", "text,label\na,sports|news\nb,tech\n")
    assert read_labelled_texts(path).labels == ["sports|news", "tech"]  # a class name, unless asked for
    assert read_labelled_texts(path, multi_label=True).labels == [["news", "sports"], ["tech"]]


def test_bad_records_name_file_and_line_or_are_skipped(tmp_path):
    path = write(tmp_path / "bad.csv", "text,label\nfine,pos\n,neg\nok,\nalso fine,neg\n")
    with pytest.raises(CorpusError, match=r"bad\.csv:3: missing 'text'"):
        read_labelled_texts(path)
    data = read_labelled_texts(path, skip_bad=True)
    assert data.texts == ["fine", "also fine"] and data.skipped == 2
    path = write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not a JSON object"):
        read_labelled_texts(path)
    with pytest.raises(CorpusError, match=r"expected a \.csv, \.tsv, \.jsonl or \.json file"):
        read_labelled_texts(write(tmp_path / "a.txt", "x"))
    with pytest.raises(CorpusError, match="no such file"):
        read_labelled_texts(str(tmp_path / "none.csv"))
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin\.csv:2: not UTF-8 text"):
        read_labelled_texts(str(tmp_path / "latin.csv"))


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""

CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_
"""


def test_conll_and_conllu(tmp_path):
    data = read_tagged_sentences(write(tmp_path / "ner.conll", CONLL))
    assert data.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert data.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    chunks = read_tagged_sentences(str(tmp_path / "ner.conll"), tag_column=2)
    assert chunks.tags[1] == ["B-NP", "I-NP"]
    ud = read_tagged_sentences(write(tmp_path / "en.conllu", CONLLU))
    assert ud.words == [["I", "ca", "n't", "go", "."]] and ud.tags == [["PRON", "AUX", "PART", "VERB", "PUNCT"]]
    assert read_tagged_sentences(str(tmp_path / "en.conllu"), tag_column=4).tags[0][1] == "MD"


def test_bad_conll_lines(tmp_path):
    path = write(tmp_path / "bad.conllu", CONLLU.replace("4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", "4\tgo\tVERB") +
                 "\n1\tOK\tok\tINTJ\tUH\t_\t0\troot\t_\t_\n")
    with pytest.raises(CorpusError, match=r"bad\.conllu:7: expected a word and a tag in column 3"):
        read_tagged_sentences(path)
    data = read_tagged_sentences(path, skip_bad=True)
    assert data.words == [["OK"]] and data.skipped == 1
    with pytest.raises(CorpusError, match="no tagged sentences"):
        read_tagged_sentences(write(tmp_path / "empty.conll", "-DOCSTART- O\n\n"))


def squad(answers, impossible=False):
    context = "The Eiffel Tower was finished in 1889 in Paris."
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "When?", "answers": answers, "is_impossible": impossible},
        {"id": "q2", "question": "Who sings?", "answers": [], "is_impossible": True}]}]}]}


def test_squad_v1_and_v2(tmp_path):
    path = write(tmp_path / "dev.json", json.dumps(squad([{"text": "1889", "answer_start": 33},
                                                          {"text": "in 1889", "answer_start": 30}])))
    data = read_squad(path)
    assert data.ids == ["q1", "q2"] and data.answers == [[("1889", 33), ("in 1889", 30)], []]
    assert data.contexts[0][33:37] == "1889" and data.questions[1] == "Who sings?"


def test_squad_answers_must_match_their_offsets(tmp_path):
    path = write(tmp_path / "bad.json", json.dumps(squad([{"text": "1889", "answer_start": 30}])))
    with pytest.raises(CorpusError, match=r"question 'q1': answer '1889' is not at character 30"):
        read_squad(path)
    data = read_squad(path, skip_bad=True)
    assert data.ids == ["q2"] and data.skipped == 1
    with pytest.raises(CorpusError, match="not a SQuAD JSON file"):
        read_squad(write(tmp_path / "x.json", '{"version": 1}'))
