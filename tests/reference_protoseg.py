"""What the public ProtoSeg code does, class by class, as a reference for tests and benchmarks.

For every class: mask that class's pixels out of the whole batch, run Algorithm 1
(supplement §S2) on them, take the argmax assignment and momentum-update that
class's prototypes from the l2-normalised sums.
"""

import torch
import torch.nn.functional as F


def algorithm1(scores_kn: torch.Tensor, iters: int = 3, kappa: float = 0.05) -> torch.Tensor:
    """The supplement's Algorithm 1 verbatim: scores P^T X as [K, N] -> L [K, N]."""
    L = torch.exp(scores_kn / kappa)
    L /= torch.sum(L)
    K, N = L.shape
    for _ in range(iters):
        L /= torch.sum(L, dim=1, keepdim=True)
        L /= K
        L /= torch.sum(L, dim=0, keepdim=True)
        L /= N
    L *= N
    return L


def per_class_cluster_and_update(prototypes, embeddings, own_scores, labels, momentum, iters=3, kappa=0.05):
    """-> (assignment [N], new prototypes [C, K, D]) by a Python loop over classes.

    own_scores [N, K]: cosines of each pixel to its own class's prototypes (the public
    code slices them from its precomputed pixel-prototype cosine map).
    """
    protos = prototypes.clone()
    assigned = torch.zeros_like(labels)
    for c in range(prototypes.shape[0]):
        mask = labels == c
        if not mask.any():
            continue
        x = embeddings[mask]
        q = algorithm1(own_scores[mask].t(), iters, kappa).t()
        index = q.argmax(dim=1)
        assigned[mask] = index
        sums = F.one_hot(index, prototypes.shape[1]).to(x.dtype).t() @ x
        hit = sums.norm(dim=1) > 0
        new = F.normalize(sums, dim=1)
        protos[c, hit] = F.normalize(momentum * protos[c, hit] + (1 - momentum) * new[hit], dim=-1)
    return assigned, protos
