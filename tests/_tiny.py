"""Tiny random-init models and learnable synthetic data shared by the Trainer tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB, SEQ = 64, 12


def tiny_bert(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg.update(overrides)
    return BertForSequenceClassification(BertConfig(**cfg)).to(dtype)


class TokenDataset(torch.utils.data.Dataset):
    """Label = whether the first token is in the upper half of the vocabulary: learnable in a few steps."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = (self.input_ids[:, 0] >= VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


@torch.no_grad()
def dataset_loss(model: torch.nn.Module, ds: TokenDataset) -> float:
    model.eval()
    out = model(input_ids=ds.input_ids, labels=ds.labels)
    model.train()
    return out.loss.item()
