"""Where documents come from: plain-text files and folders, JSON Lines, and
the embedded corpus of English text that every Python installation carries.

A source yields documents (strings) in a fixed order and has a fingerprint
that changes when its content may have changed (paths, sizes, modification
times), which keys the token caches built from it.
"""

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig


class CorpusError(ValueError):
    """A corpus that cannot be read: missing, empty, undecodable or malformed."""


class TextSource:
    """Documents from a path.

    - a ``.jsonl`` / ``.json`` file: JSON Lines, one object per line, the
      document in ``text_field``;
    - any other file: plain UTF-8 text, documents separated by blank lines;
    - a folder: every file under it (sorted, hidden files skipped), each
      ``.jsonl`` file read as JSON Lines and every other file as one document.
    """

    def __init__(self, path, text_field="text"):
        if not os.path.exists(path):
            raise CorpusError(f"corpus: no such file or folder {path}")
        self.path, self.text_field = os.path.abspath(path), text_field
        if os.path.isdir(path):
            self.files = sorted(
                os.path.join(d, f) for d, dirs, files in os.walk(self.path) for f in files
                if not f.startswith(".") and not any(p.startswith(".") for p in os.path.relpath(d, path).split(os.sep)
                                                     if p != "."))
            if not self.files:
                raise CorpusError(f"corpus: the folder {path} holds no files")
        else:
            self.files = [self.path]
        self.name = path

    def fingerprint(self):
        stats = [(os.path.relpath(f, self.path), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in self.files]
        return _hash(["files", self.path, self.text_field, stats])

    def documents(self):
        whole_files = len(self.files) > 1 or os.path.isdir(self.path)
        for path in self.files:
            if path.endswith((".jsonl", ".json")):
                yield from self._json_lines(path)
            elif whole_files:
                text = _read_text(path)
                if text.strip():
                    yield text
            else:
                yield from _paragraph_documents(path)

    def _json_lines(self, path):
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise CorpusError(f"corpus: {path} line {number} is not a JSON object in UTF-8 ({error})") from None
                if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
                    raise CorpusError(f"corpus: {path} line {number} has no string field {self.text_field!r}")
                if record[self.text_field].strip():
                    yield record[self.text_field]


class EmbeddedSource:
    """English text shipped with the interpreter: the docstrings of the
    standard library's modules, classes and functions (read with ``ast``,
    nothing is imported) and the language reference topics of ``pydoc``.
    About 2 MB of text, 6-7 thousand documents; no download needed.
    """

    name = "embedded (Python standard library documentation)"
    MIN_WORDS = 8  # docstrings shorter than this are one-liners with little language

    def __init__(self):
        self.root = sysconfig.get_paths()["stdlib"]

    def fingerprint(self):
        return _hash(["embedded", sys.version, self.root])

    def documents(self):
        skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(d for d in subfolders if d not in skip)
            for name in sorted(f for f in files if f.endswith(".py")):
                yield from self._docstrings(os.path.join(folder, name))
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip it
            return
        for key in sorted(topics):
            yield topics[key]

    def _docstrings(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            return
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text.split()) >= self.MIN_WORDS:
                    yield text


def open_source(path=None, text_field="text"):
    """The embedded corpus for None, else a TextSource."""
    return EmbeddedSource() if path is None else TextSource(path, text_field)


# A sentence ends at . ! or ? followed by space and a capital, digit or opening
# quote/bracket, or at a blank line. The cut is made before the space, so a
# byte-level tokenizer sees each sentence's leading space as in running text.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])(?=\s+[\"'(\[]?[A-Z0-9])|(?=\n[ \t]*\n)")


def split_sentences(text):
    """The sentences of a document. Whitespace between them stays attached to
    the next one, so the sentences put together give the text back exactly
    (a document of whitespace only has none)."""
    pieces, begin = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        if match.start() > begin:
            pieces.append(text[begin:match.start()])
        begin = match.start()
    pieces.append(text[begin:])
    sentences, pending = [], ""
    for piece in pieces:
        if piece.strip():
            sentences.append(pending + piece)
            pending = ""
        else:
            pending += piece  # whitespace alone is no sentence: it goes with the next one
    if pending and sentences:
        sentences[-1] += pending
    return sentences


def _read_text(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"corpus: {path} is not UTF-8 text (undecodable byte at offset {error.start})") from None


def _paragraph_documents(path):
    """Documents of a plain-text file: runs of lines between blank lines."""
    lines, offset = [], 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(f"corpus: {path} is not UTF-8 text "
                                  f"(undecodable byte at offset {offset + error.start})") from None
            offset += len(raw)
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines)
                lines = []
    if lines:
        yield "".join(lines)


def _hash(value):
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]
