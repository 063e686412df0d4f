"""A tiny random-init causal LM and a character-level tokenizer, built offline, for the TRL tests and docs."""

from __future__ import annotations

import string

import torch

CHARS = string.ascii_lowercase + string.digits + " .,!?'-:"
SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>")


def char_tokenizer():
    """A ``PreTrainedTokenizerFast`` with one token per character (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate((*SPECIAL, *CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def tiny_lm(seed: int = 0, vocab_size: int = len(SPECIAL) + len(CHARS), **overrides):
    """A 2-layer Llama-style causal LM with hidden size 32 (about 40k parameters), random init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
               eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg))


def tiny_classifier(seed: int = 0, **overrides):
    """The same backbone with a 1-output head, as TRL's RewardTrainer wants."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = dict(vocab_size=len(SPECIAL) + len(CHARS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
               eos_token_id=1, bos_token_id=2, num_labels=1)
    cfg.update(overrides)
    return LlamaForSequenceClassification(LlamaConfig(**cfg))
