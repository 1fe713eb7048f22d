"""SimCLR's NT-Xent objective (Chen et al., ICML 2020, Eq. 1).

Each of the 2m embeddings has one positive (the other view of its image) and 2m - 2
negatives; the loss is the cross-entropy of picking the positive among them, on cosine
similarities divided by a temperature tau.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mec_core.methods.pairs import check_pair

TEMPERATURE = 0.5  # tau of the paper's CIFAR-10 runs (Appendix B.9)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Mean NT-Xent over the 2m embeddings of z1, z2 (m x d, rows of one image aligned)."""
    check_pair(z1, z2)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    m = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2m, d)
    logits = z @ z.T / temperature  # (2m, 2m) cosine similarities
    logits.fill_diagonal_(float("-inf"))  # an embedding is not its own candidate
    positive = torch.cat([torch.arange(m, 2 * m), torch.arange(m)]).to(z.device)
    return F.cross_entropy(logits, positive)


def objective(s1, s2, t1, t2, hp) -> dict[str, torch.Tensor]:
    """Gradients flow through both views; there is no teacher."""
    return {"loss": nt_xent(s1, s2)}
