"""Fake of ldm/modules/encoders/modules.py: tiny stand-ins for the CLIP text encoders
(bytes -> embeddings)."""

import torch
from torch import nn


class FakeTextTransformer(nn.Module):
    def __init__(self, width, max_length=77):
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(256, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
        self.final_layer_norm = nn.LayerNorm(width)

    def forward(self, texts):
        device = self.position_embedding.device
        ids = [
            list(t.encode("utf8")[: self.max_length])
            + [0] * (self.max_length - len(t.encode("utf8")[: self.max_length]))
            for t in texts
        ]
        tokens = self.token_embedding(torch.tensor(ids, dtype=torch.long, device=device))
        return self.final_layer_norm(tokens + self.position_embedding)


class FrozenCLIPEmbedder(nn.Module):
    """SD1 text encoder stand-in: ``forward(list[str]) -> (b, max_length, width)``."""

    def __init__(self, width=64, max_length=77):
        super().__init__()
        self.transformer = FakeTextTransformer(width, max_length)
        self.max_length = max_length

    def forward(self, text):
        return self.transformer(text)

    def encode(self, text):
        return self(text)


class FrozenOpenCLIPEmbedder(FrozenCLIPEmbedder):
    """SD2 text encoder stand-in; has ``.model`` like the real one (the WebUI detects SD2 by it)."""

    def __init__(self, width=64, max_length=77):
        super().__init__(width, max_length)
        self.model = self.transformer
