"""Tokenizers from the ``tokenizers`` library: train a WordPiece (BERT) or
byte-level BPE (GPT-2) vocabulary, or load an existing one, with the special
tokens each family needs named in one place.

Saved tokenizers are the files ``transformers`` reads (tokenizer.json,
tokenizer_config.json, special_tokens_map.json and, for WordPiece, vocab.txt),
so a pretrained model directory loads with ``AutoTokenizer`` as it is.
"""

import hashlib
import json
import os

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# role -> token text. The roles are what the data pipeline asks for; the texts
# are the conventional ones of BERT and GPT-2.
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
GPT_SPECIAL_TOKENS = {"eot": "<|endoftext|>"}
_KINDS = {"wordpiece": BERT_SPECIAL_TOKENS, "bpe": GPT_SPECIAL_TOKENS}


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` and the ids of its special tokens.

    kind: "wordpiece" (BERT: [PAD] [UNK] [CLS] [SEP] [MASK]) or "bpe"
    (GPT-2 byte-level: <|endoftext|>, which also pads). ``special_ids`` maps
    each role to its id; ``cls_id``, ``sep_id``, ... are attributes.
    """

    def __init__(self, backend, kind):
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'wordpiece' or 'bpe', got {kind!r}")
        self.backend, self.kind = backend, kind
        self.special_ids = {}
        for role, text in _KINDS[kind].items():
            token_id = backend.token_to_id(text)
            if token_id is None:
                raise ValueError(f"a {kind} tokenizer needs the special token {text!r} ({role}); "
                                 f"this vocabulary has no such token")
            self.special_ids[role] = token_id
            setattr(self, f"{role}_id", token_id)
        if kind == "bpe":
            self.pad_id = self.eot_id
        self.vocab_size = backend.get_vocab_size()

    def encode(self, texts):
        """[(ids int32 (n,), word_starts bool (n,))] for a list of strings, no
        special tokens added. word_starts marks each token that begins a word
        as the pre-tokenizer splits words (whitespace and punctuation), which
        is what whole-word and span masking group by. Encoded by the library's
        thread pool."""
        out = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray(enc.ids, np.int32)
            words = np.asarray([-1 if w is None else w for w in enc.word_ids], np.int64)
            starts = np.ones(len(ids), bool)
            starts[1:] = words[1:] != words[:-1]
            out.append((ids, starts))
        return out

    def decode(self, ids):
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def fingerprint(self):
        """A hash of the whole tokenizer (vocabulary, normalizer, rules), which
        keys the token caches built with it."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]

    def save(self, directory, model_max_length=512):
        """Write the files ``transformers.AutoTokenizer`` loads."""
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        special = {f"{role}_token": text for role, text in _KINDS[self.kind].items()}
        if self.kind == "wordpiece":
            with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
                vocab = self.backend.get_vocab()
                f.writelines(token + "\n" for token in sorted(vocab, key=vocab.get))
            normalizer = json.loads(self.backend.to_str()).get("normalizer") or {}
            config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": bool(normalizer.get("lowercase")),
                      **special}
        else:
            special = {"bos_token": special["eot_token"], "eos_token": special["eot_token"],
                       "unk_token": special["eot_token"]}
            config = {"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": False, **special}
        config["model_max_length"] = model_max_length
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)


def train_tokenizer(texts, kind="wordpiece", vocab_size=8192, lowercase=True, min_frequency=2):
    """Train a vocabulary on an iterable of strings.

    "wordpiece": BERT's normalizer (``lowercase``, accents stripped when
    lowercasing), whitespace-and-punctuation pre-tokenizer, "##" continuation
    prefix and the [CLS] A [SEP] B [SEP] template. "bpe": GPT-2's byte-level
    BPE (no unknown tokens, no normalization).
    """
    if vocab_size < 64:
        raise ValueError(f"vocab_size must be at least 64, got {vocab_size}")
    special = list(_special_texts(kind))
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=BERT_SPECIAL_TOKENS["unk"]))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special, show_progress=False)
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    if kind == "wordpiece":
        # The library numbers equally frequent WordPiece tokens in hash-map order,
        # which changes from run to run; sorting them makes a trained tokenizer a
        # function of its corpus (ids carry no meaning for WordPiece).
        vocab = backend.get_vocab()
        order = special + sorted(set(vocab) - set(special))
        backend.model = models.WordPiece({token: i for i, token in enumerate(order)},
                                         unk_token=BERT_SPECIAL_TOKENS["unk"])
        _add_pair_template(backend)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return TextTokenizer(backend, kind)


def load_tokenizer(path, kind=None, lowercase=True):
    """A tokenizer from a tokenizer.json, a WordPiece vocab.txt, or a directory
    holding either (tokenizer.json preferred). ``kind`` defaults to what the
    file's model is (WordPiece or BPE)."""
    if os.path.isdir(path):
        for name in ("tokenizer.json", "vocab.txt"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name), kind, lowercase)
        raise FileNotFoundError(f"tokenizer: {path} holds neither tokenizer.json nor vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer: no such file {path}")
    if path.endswith(".txt"):
        backend = Tokenizer(models.WordPiece.from_file(path, unk_token=BERT_SPECIAL_TOKENS["unk"]))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        # Registered as special, [MASK] or [SEP] in text stays one token, as in transformers.
        backend.add_special_tokens([t for t in BERT_SPECIAL_TOKENS.values() if backend.token_to_id(t) is not None])
        kind = kind or "wordpiece"
    else:
        try:
            backend = Tokenizer.from_file(path)
        except Exception as error:  # the library raises a bare Exception on malformed files
            raise ValueError(f"tokenizer: {path} is not a valid tokenizer.json ({error})") from None
        model = json.loads(backend.model.__getstate__())["type"]
        kind = kind or {"WordPiece": "wordpiece", "BPE": "bpe"}.get(model)
        if kind is None:
            raise ValueError(f"tokenizer: {path} holds a {model} model; expected WordPiece or BPE")
    tokenizer = TextTokenizer(backend, kind)
    if kind == "wordpiece":
        _add_pair_template(backend)
    return tokenizer


def _special_texts(kind):
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'wordpiece' or 'bpe', got {kind!r}")
    return _KINDS[kind].values()


def _add_pair_template(backend):
    """[CLS] A [SEP] (B [SEP]) with token types 0 / 1, as BERT's tokenizer adds."""
    cls, sep = BERT_SPECIAL_TOKENS["cls"], BERT_SPECIAL_TOKENS["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
