"""BERT and GPT on the layers of ssl_core.nn, with Hugging Face-compatible
checkpoints (from_pretrained / save_pretrained)."""

from ssl_core.models.bert import Bert
from ssl_core.models.config import BertConfig, GPTConfig
from ssl_core.models.gpt import GPT
from ssl_core.models.huggingface import from_pretrained, save_pretrained
from ssl_core.models.tasks import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

__all__ = ["Bert", "BertConfig", "BertForQuestionAnswering", "BertForSequenceClassification",
           "BertForTokenClassification", "GPT", "GPTConfig", "from_pretrained", "save_pretrained"]
