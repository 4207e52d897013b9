"""The M2P ("memory to parameters") transformer: a pure `nn.Module` that knows nothing about language models.

Input and output are grids ``(batch, layers, slots, hidden)``. Learned layer and slot embeddings (zero-initialised)
are added, then post-LN transformer-encoder layers alternate between attention across the layer axis (each slot
attends to the same slot in every LM layer) and attention across the slot axis (each LM layer's slots attend to
each other). Axial attention costs ``O(L² + M²)`` per position instead of ``O((L·M)²)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class M2PTransformer(nn.Module):
    """Alternating layer-axis / slot-axis post-LN transformer over a memory grid.

    Args:
        num_layers: LM layers `L` (rows of the grid).
        num_slots: memory slots `M` per LM layer.
        hidden_size: width `H` of every grid cell (the LM hidden size).
        depth: number of encoder layers; even indices attend across LM layers, odd ones across slots.
        num_heads: attention heads.
        ffn_dim: feed-forward width.
        input_norm: apply a parameter-free LayerNorm to the input grid first.
    """

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        hidden_size: int,
        depth: int = 2,
        num_heads: int = 1,
        ffn_dim: int | None = None,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.layer_embedding = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.slot_embedding = nn.Parameter(torch.zeros(num_slots, hidden_size))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=hidden_size,
                nhead=num_heads,
                dim_feedforward=ffn_dim or 2 * hidden_size,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=False,
            )
            for _ in range(depth)
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """Map a memory grid ``(B, L, M, H)`` to a parameter grid of the same shape."""
        if self.input_norm:
            grid = F.layer_norm(grid, grid.shape[-1:])
        x = grid + self.layer_embedding[:, None, :] + self.slot_embedding[None, :, :]
        batch, layers, slots, hidden = x.shape
        for index, block in enumerate(self.blocks):
            if index % 2 == 0:  # across LM layers: sequences of length L, one per (batch, slot)
                x = x.transpose(1, 2).reshape(batch * slots, layers, hidden)
                x = block(x).reshape(batch, slots, layers, hidden).transpose(1, 2)
            else:  # across slots: sequences of length M, one per (batch, layer)
                x = block(x.reshape(batch * layers, slots, hidden)).reshape(batch, layers, slots, hidden)
        return x
