"""What a paper reports beyond top-1 error (methods.md, "Beyond top-1 error"), accumulated over the test split on
the device, batch by batch, and finished once per epoch.

- Calibration per eval model: expected calibration error over 15 equal-width confidence bins (Guo et al., ICML
  2017, Eq. 3: ECE = sum_b |B_b|/n |acc(B_b) - conf(B_b)|) and the negative log-likelihood (mean cross-entropy).
- Diversity of a method's members (peers, branches, networks): mean pairwise top-1 disagreement (the share of test
  images on which two members predict different classes) and mean pairwise KL(p_i || p_j) over ordered pairs
  i != j; and the ensemble gain, the best member's top-1 error minus the ensemble's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ECE_BINS = 15


class Calibration:
    """Running sums for one eval model: NLL, and per confidence bin the count, confidence and correct predictions."""

    def __init__(self, device: torch.device, bins: int = ECE_BINS) -> None:
        self.bins = bins
        self.sums = torch.zeros(3 * bins + 1, dtype=torch.float64, device=device)  # nll, counts, conf, correct

    def add(self, logits: Tensor, target: Tensor) -> None:
        logits = logits.float()
        probs = logits.softmax(1)
        confidence, predicted = probs.max(1)
        # bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 cannot occur (softmax > 0)
        index = (confidence * self.bins).ceil().long().clamp_(1, self.bins) - 1
        nll = F.cross_entropy(logits, target, reduction="sum")
        b = self.bins
        self.sums[0] += nll.double()
        self.sums[1:1 + b].index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.sums[1 + b:1 + 2 * b].index_add_(0, index, confidence.double())
        self.sums[1 + 2 * b:].index_add_(0, index, (predicted == target).double())

    def result(self) -> dict[str, float]:
        """{'ece': percent, 'nll': nats per image} from the sums (all-reduced in place across ranks, if any)."""
        s = self.sums.double().cpu()
        b = self.bins
        counts, confidence, correct = s[1:1 + b], s[1 + b:1 + 2 * b], s[1 + 2 * b:]
        n = float(counts.sum())
        if n == 0:
            return {"ece": float("nan"), "nll": float("nan")}
        ece = float((correct - confidence).abs().sum() / n)  # |B_b|/n |acc_b - conf_b| = |correct_b - conf_b| / n
        return {"ece": 100.0 * ece, "nll": float(s[0]) / n}


class Diversity:
    """Running sums over a method's members: pairwise disagreements and pairwise KL, over ordered pairs."""

    def __init__(self, members: list[str], device: torch.device) -> None:
        self.members = members
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # disagreeing pairs, KL, images

    def add(self, logits: dict[str, Tensor]) -> None:
        zs = [logits[m].float() for m in self.members]
        log_p = [z.log_softmax(1) for z in zs]
        predicted = [z.argmax(1) for z in zs]
        pairs = disagree = kl = 0
        for i in range(len(zs)):
            for j in range(len(zs)):
                if i == j:
                    continue
                pairs += 1
                disagree = disagree + (predicted[i] != predicted[j]).double().sum()
                kl = kl + (log_p[i].exp() * (log_p[i] - log_p[j])).sum(1).double().sum()
        self.sums[0] += disagree / max(pairs, 1)
        self.sums[1] += kl / max(pairs, 1)
        self.sums[2] += zs[0].shape[0]

    def result(self) -> dict[str, float]:
        """{'disagreement': percent of images, 'kl': nats per image}, each the mean over member pairs."""
        s = self.sums.double().cpu()
        n = float(s[2])
        return {"disagreement": 100.0 * float(s[0]) / n, "kl": float(s[1]) / n} if n else {}


def ensemble_gain(top1: dict[str, float], members: list[str], ensemble: str = "ensemble") -> float | None:
    """The best member's top-1 error minus the ensemble's (positive: the ensemble is better), None without one."""
    if ensemble not in top1 or not members or any(m not in top1 for m in members):
        return None
    return min(top1[m] for m in members) - top1[ensemble]


def finite(values: dict[str, float | None]) -> dict[str, float | None]:
    """JSON-safe: a NaN or infinite measurement is recorded as missing (None)."""
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in values.items()}


@torch.no_grad()
def evaluate(method, loader, autocast, device: torch.device, world: int,
             num_classes: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({eval model: top1_error, top5_error, ece, nll}, diversity of the method's members) over `loader` (the test
    split), summed across ranks when `world` > 1."""
    method.eval()
    k = min(5, num_classes)
    correct1: dict[str, torch.Tensor] = {}
    correct5: dict[str, torch.Tensor] = {}
    calibration: dict[str, Calibration] = {}
    members = [m for m in method.members() if m in method.eval_names()]
    diversity = Diversity(members, device) if len(members) > 1 else None
    n = 0
    for x, y in loader:
        with autocast():
            logits = method.eval_logits(x)
        for name, z in logits.items():
            top = z.float().topk(k, dim=1).indices
            hit = top == y[:, None]
            correct1[name] = correct1.get(name, 0) + hit[:, 0].sum()
            correct5[name] = correct5.get(name, 0) + hit.any(1).sum()
            calibration.setdefault(name, Calibration(device)).add(z, y)
        if diversity is not None:
            diversity.add(logits)
        n += len(y)
    names = sorted(correct1)
    if world > 1:
        counts = torch.tensor([n] + [int(correct1[k]) for k in names] + [int(correct5[k]) for k in names],
                              dtype=torch.long, device=device)
        torch.distributed.all_reduce(counts)
        n = int(counts[0])
        correct1 = dict(zip(names, counts[1:1 + len(names)].tolist()))
        correct5 = dict(zip(names, counts[1 + len(names):].tolist()))
        for sums in [*(calibration[name] for name in names), *([diversity] if diversity else [])]:
            torch.distributed.all_reduce(sums.sums)  # in place: result() reads the reduced sums
    errors = {name: {"top1_error": 100.0 * (n - int(correct1[name])) / n,
                     "top5_error": 100.0 * (n - int(correct5[name])) / n,
                     **finite(calibration[name].result())} for name in names}
    spread = finite(diversity.result()) if diversity is not None else {}
    if diversity is not None:
        spread["ensemble_gain"] = ensemble_gain({m: e["top1_error"] for m, e in errors.items()}, members)
    return errors, spread
