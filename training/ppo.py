"""PPO math as pure functions (torch only). Each loss returns `(loss, metrics)`."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token | prefix) for each position.

    logits: (B, T, V) scores predicting tokens (already shifted: logits[:, t] predicts tokens[:, t]);
    tokens: (B, T) ids. Returns (B, T). Computed in fp32 for stability under bf16 autocast."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
