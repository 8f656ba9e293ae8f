"""Loss building blocks shared by the methods (notation of methods.md)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KD_T(teacher -> student) = T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch
    (Hinton et al., 2015). The teacher is *not* detached here: callers detach where the method says so."""
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def sigmoid_rampup(epoch: float, length: float) -> float:
    """w(e) = exp(-5 (1 - e/length)^2) for e < length, then 1 (Laine & Aila, 2017; ONE/OKDDip code)."""
    if length <= 0 or epoch >= length:
        return 1.0
    phase = 1.0 - max(0.0, epoch) / length
    return float(math.exp(-5.0 * phase * phase))
