"""Data for pretraining: tokenizers, corpora cached as token files, masking
and sentence-pair objectives, and the batches built from them."""

from ssl_core.data.masking import IGNORE, MaskingConfig, mask_batch
from ssl_core.data.pretraining import OBJECTIVES, PretrainingData
from ssl_core.data.sources import CorpusError, EmbeddedSource, TextSource, open_source, split_sentences
from ssl_core.data.tokenized import TokenizedCorpus, tokenize_corpus
from ssl_core.data.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer

__all__ = ["IGNORE", "OBJECTIVES", "CorpusError", "EmbeddedSource", "MaskingConfig", "PretrainingData",
           "TextSource", "TextTokenizer", "TokenizedCorpus", "load_tokenizer", "mask_batch", "open_source",
           "split_sentences", "tokenize_corpus", "train_tokenizer"]
