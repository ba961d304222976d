"""Reading the files of the downstream tasks: labelled texts (CSV, TSV, JSON
Lines), tagged sentences (CoNLL, CoNLL-U) and reading comprehension (SQuAD
1.1 / 2.0 JSON).

A bad record is an error naming the file and line (or question id), or,
with ``skip_bad=True``, is left out and counted in the result's ``skipped``.
"""

import csv
import dataclasses
import json
import os

from ssl_core.data.sources import CorpusError


@dataclasses.dataclass
class LabelledTexts:
    """texts (N,), texts_b (N,) or None for single texts, labels (N,) as
    read (strings, or floats when every label is a number), and the count of
    records skipped."""
    texts: list
    texts_b: list
    labels: list
    skipped: int = 0


@dataclasses.dataclass
class TaggedSentences:
    """words and tags: (N,) lists of equal-length lists of strings."""
    words: list
    tags: list
    skipped: int = 0


@dataclasses.dataclass
class QuestionAnswering:
    """One entry per question: ids, questions, contexts, answers (lists of
    (text, character start); empty for an unanswerable SQuAD 2.0 question)."""
    ids: list
    questions: list
    contexts: list
    answers: list
    skipped: int = 0


def read_labelled_texts(path, text="text", text_b="text_b", label="label", regression=None, multi_label=None,
                        skip_bad=False):
    """Texts and labels from a .csv / .tsv file with a header row, or JSON
    Lines (.jsonl / .json). ``text_b`` is used when the file has that column
    (sentence pairs; None: never). ``label=None`` reads unlabelled texts
    (labels all None). Labels are class names (strings) unless ``regression``;
    by default a task is a regression when every label is a number and some
    are not whole (STS-B's 3.8, not SST-2's 0 and 1). With ``multi_label``
    (by default: when JSON labels are lists) each label is a sorted list of
    class names: a JSON list, or names separated by "|" in CSV/TSV."""
    records = _records(path)
    texts, texts_b, labels, skipped = [], [], [], 0
    pair = None
    for where, record in records:
        if pair is None:
            pair = text_b is not None and text_b in record
        try:
            row = [_field(record, text, where), _field(record, text_b, where) if pair else None,
                   _field(record, label, where) if label is not None else None]
        except CorpusError:
            if not skip_bad:
                raise
            skipped += 1
            continue
        texts.append(row[0])
        texts_b.append(row[1])
        labels.append(row[2])
    if not texts:
        raise CorpusError(f"{path}: no labelled texts" + (f" ({skipped} bad records skipped)" if skipped else ""))
    if label is None:  # unlabelled texts, for prediction
        return LabelledTexts(texts, texts_b if pair else None, labels, skipped)
    if multi_label is None:
        multi_label = any(isinstance(x, list) for x in labels)
    if multi_label:
        labels = [sorted({str(v).strip() for v in (x if isinstance(x, list) else str(x).split("|")) if str(v).strip()})
                  for x in labels]
        return LabelledTexts(texts, texts_b if pair else None, labels, skipped)
    try:
        numbers = [float(x) for x in labels]
    except (TypeError, ValueError):
        numbers = None
    if regression is None:
        regression = numbers is not None and any(x != int(x) for x in numbers)
    if regression and numbers is None:
        raise CorpusError(f"{path}: a regression needs numeric labels in {label!r}")
    labels = numbers if regression else [str(x) for x in labels]
    return LabelledTexts(texts, texts_b if pair else None, labels, skipped)


def read_tagged_sentences(path, tag_column=None, skip_bad=False, tagged=True):
    """Words and tags from CoNLL (whitespace-separated columns, the word first,
    sentences separated by blank lines, -DOCSTART- lines ignored; default tag
    column: the last) or CoNLL-U (.conllu: ten tab-separated columns, comment
    and multi-word lines ignored; default tag column: 3, UPOS). Columns count
    from 0. ``tagged=False`` reads the words alone (tags all None), for
    prediction."""
    conllu = path.endswith(".conllu")
    column = tag_column if tag_column is not None else (3 if conllu else -1)
    words, tags, skipped = [], [], 0
    sentence, bad = ([], []), False
    for number, line in _lines(path):
        if line.startswith("#") and conllu or line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if sentence[0] and not bad:
                words.append(sentence[0])
                tags.append(sentence[1])
            skipped += bad
            sentence, bad = ([], []), False
            continue
        fields = line.rstrip("\n").split("\t") if conllu else line.split()
        if conllu and ("-" in fields[0] or "." in fields[0]):
            continue  # multi-word tokens and empty nodes
        try:
            if conllu and len(fields) != 10:
                raise IndexError
            word, tag = fields[1 if conllu else 0], fields[column] if tagged else None
        except IndexError:
            if not skip_bad:
                raise CorpusError(f"{path}:{number}: expected a word and a tag in column {column}, got "
                                  f"{line.strip()!r}") from None
            bad = True
            continue
        sentence[0].append(word)
        sentence[1].append(tag)
    if sentence[0] and not bad:
        words.append(sentence[0])
        tags.append(sentence[1])
    skipped += bad
    if not words:
        raise CorpusError(f"{path}: no tagged sentences")
    return TaggedSentences(words, tags, skipped)


def read_squad(path, skip_bad=False, answered=True):
    """The questions of a SQuAD 1.1 or 2.0 file. Each answer must be found at
    its ``answer_start`` in the context; one that is not is an error naming
    the question, or is skipped with ``skip_bad``. ``answered=False`` reads
    questions without answers (for prediction)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CorpusError(f"{path}: not a SQuAD JSON file with a 'data' list ({error})") from None
    out, skipped = QuestionAnswering([], [], [], []), 0
    for article in data:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = [(a["text"], int(a["answer_start"])) for a in qa.get("answers", [])]
                wrong = [a for a in answers if context[a[1]:a[1] + len(a[0])] != a[0]]
                if answered and not answers and not qa.get("is_impossible", False):
                    wrong = [("(no answers)", -1)]
                if wrong:
                    if not skip_bad:
                        raise CorpusError(f"{path}: question {qa.get('id')!r}: answer {wrong[0][0]!r} is not at "
                                          f"character {wrong[0][1]} of its context")
                    skipped += 1
                    continue
                out.ids.append(str(qa.get("id")))
                out.questions.append(qa["question"])
                out.contexts.append(context)
                out.answers.append(answers)
    if not out.ids:
        raise CorpusError(f"{path}: no questions")
    out.skipped = skipped
    return out


def _records(path):
    """[(where, {column: value})] of a CSV/TSV (header first) or JSON Lines file."""
    if path.endswith((".jsonl", ".json")):
        records = []
        for number, line in _lines(path):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"{path}:{number}: not a JSON object ({error})") from None
                if not isinstance(record, dict):
                    raise CorpusError(f"{path}:{number}: not a JSON object")
                records.append((f"{path}:{number}", record))
        return records
    if not path.endswith((".csv", ".tsv")):
        raise CorpusError(f"{path}: expected a .csv, .tsv, .jsonl or .json file")
    lines = [line for _, line in _lines(path)]
    reader = csv.DictReader(lines, delimiter="\t" if path.endswith(".tsv") else ",")
    if not reader.fieldnames:
        raise CorpusError(f"{path}: empty, expected a header row")
    return [(f"{path}:{reader.line_num}", row) for row in reader]


def _field(record, name, where):
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CorpusError(f"{where}: missing {name!r}")
    return value


def _lines(path):
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: no such file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path}:{number}: not UTF-8 text") from None
