"""OKDPH, Online Knowledge Distillation with Parameter Hybridization (Zhang et al., CVPR 2023; official
tianlizhang/OKDPH @ a562089, src/OKDPH.py).

N students of one architecture (default 2), from identical initial weights unless `init=different` (L119-125), and a
hybrid-weight model (HWM) of that architecture. Each step (L61-105):
  (a) the HWM's parameters and BN buffers <- sum_i r_i theta_i, r_i = 1/N (`hybrid=dirichlet`: r ~ Dir(1)) (L33-47);
  (b) every network, the HWM included, sees its own augmented view (views = N + 1);
  (c) zbar = the detached mean of all N + 1 logits;
  (d) student i: L_i = omega CE(z_i, y) + (1 - omega) CE(z_HWM, y) + beta KD_4(zbar -> z_i);
  (e) every g batches (batch index % g == 0), after the step: theta_i <- gamma theta_HWM + (1 - gamma) theta_i over
      the whole state (parameters and BN buffers), momentum kept; `fusion_unit=epoch`: after every g-th epoch (epoch
      index % g == 0), applied here before the next epoch's first step.
In the code the HWM is a separate module filled by a weight copy, so CE(z_HWM) sends no gradient to the students
(`gradient=code`, the default); `gradient=paper` sends it through the hybrid weights, r_i-scaled. The students'
losses are summed, so the HWM term appears once, weighted (1 - omega) (the official sum over students counts its
value N times; it has no gradient there). Deployed: student 0; the HWM is an extra eval model (`hwm`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError, unknown
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import indexed

# src/OKDPH.sh, CIFAR-100 (methods.md): backbone -> omega, beta, gamma, fusion every g (unit)
OFFICIAL_SETTINGS = {
    "cifar_resnet32": (1.0, 0.5, 1.0, 5, "batch"),
    "cifar_resnet110": (0.8, 0.8, 0.5, 5, "batch"),
    "cifar_wrn_20_8": (0.5, 0.5, 0.5, 5, "batch"),
    "cifar_densenet40_12": (1.0, 0.5, 0.5, 5, "batch"),
    "cifar_vgg16": (0.3, 0.3, 1.0, 1, "epoch"),
}
CODE_DEFAULTS = (0.8, 0.8, 0.5, 1, "epoch")  # src/OKDPH.py's argparse defaults: any other backbone


@dataclass
class OKDPHOptions:
    num_students: int = option(2, ge=2, le=MAX_MEMBERS)
    omega: float = option(0.8, ge=0, le=1)  # weight of the student's own CE (1 - omega: the HWM's CE)
    beta: float = option(0.8, ge=0)  # weight of KD from the mean logits
    gamma: float = option(0.5, ge=0, le=1)  # fusion ratio
    fusion_interval: int = option(5, ge=1)  # fuse every this many batches (or epochs)
    fusion_unit: str = option("batch", choices=("batch", "epoch"))  # batch or epoch
    temperature: float = option(4.0, gt=0)
    hybrid: str = option("mean", choices=("mean", "dirichlet"))  # mean (r_i = 1/N) or dirichlet (r ~ Dir(1) each step)
    init: str = option("identical", choices=("identical", "different"))  # identical (as the official code) or different
    gradient: str = option("code", choices=("code", "paper"))  # code (no gradient through the HWM) or paper
    # (through the hybrid weights, r_i-scaled)
    settings: str = option("given", choices=("given", "official"))  # given (the options above) or official
    # (omega/beta/gamma/fusion of src/OKDPH.sh by
    # backbone; other backbones: src/OKDPH.py's defaults 0.8/0.8/0.5, every epoch); the summary shows the values used
    view_augment: list[str] = field(default_factory=list, metadata={"label": "augment"})  # one recipe per network,
    # students then the HWM ([]: data.view_augment); official: [crop+flip+rotate:15, crop+flip+cutout:16,
    # crop+randaugment]


CHOICES = {"fusion_unit": ("batch", "epoch"), "hybrid": ("mean", "dirichlet"), "init": ("identical", "different"),
           "gradient": ("code", "paper"), "settings": ("given", "official")}


@register_method("okdph")
class OKDPH(OnlineKDMethod):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "OKDPH"
    Options = OKDPHOptions
    headline = "net0"
    graphable = False  # the fusion and the HWM's rebuild are decided and done on the host side of each step

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: OKDPHOptions) -> None:
        for key, valid in CHOICES.items():
            if getattr(opts, key) not in valid:
                raise unknown(f"okdph.{key}", getattr(opts, key), valid)
        if opts.settings == "official":
            name = (getattr(backbone, "names", None) or [""])[0]
            omega, beta, gamma, g, unit = OFFICIAL_SETTINGS.get(name, CODE_DEFAULTS)
            opts = dataclasses.replace(opts, omega=omega, beta=beta, gamma=gamma, fusion_interval=g, fusion_unit=unit)
        super().__init__(backbone, num_classes, opts)
        if opts.num_students < 2:
            raise UsageError(f"okdph needs num_students >= 2, got {opts.num_students}")
        if opts.fusion_interval < 1:
            raise UsageError(f"okdph.fusion_interval must be at least 1 ({opts.fusion_unit}es between fusions), got "
                             f"{opts.fusion_interval}")
        if not (0 <= opts.omega <= 1 and 0 <= opts.gamma <= 1 and opts.beta >= 0 and opts.temperature > 0):
            raise UsageError("okdph needs omega and gamma in [0, 1], beta >= 0 and temperature > 0")
        self.nets = nn.ModuleList(backbone() for _ in range(opts.num_students))
        if opts.init == "identical":
            for net in self.nets[1:]:
                net.load_state_dict(self.nets[0].state_dict())
        self.hwm = backbone()
        self.hwm.requires_grad_(False)
        self.views = opts.num_students + 1
        self.fuse_after_step = False

    def view_augment(self) -> list[str] | None:
        return list(self.opts.view_augment) or None

    # -- the hybrid-weight model -------------------------------------------------------------------
    def hybrid_ratios(self) -> list[float]:
        n = self.opts.num_students
        if self.opts.hybrid == "dirichlet":  # torch's global RNG: checkpointed with the run
            return torch.distributions.Dirichlet(torch.ones(n)).sample().tolist()
        return [1.0 / n] * n

    @staticmethod
    def state_tensors(net: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """(floating-point, other) tensors of `net`'s whole state: parameters and buffers, in state_dict order."""
        state = net.state_dict(keep_vars=True)
        return ([t.data for t in state.values() if t.is_floating_point()],
                [t.data for t in state.values() if not t.is_floating_point()])

    @torch.no_grad()
    def build_hwm(self, ratios: list[float]) -> None:
        """HWM <- sum_i r_i theta_i over parameters and float buffers; integer buffers (BN's batch count) from
        student 0."""
        hwm, hwm_int = self.state_tensors(self.hwm)
        students = [self.state_tensors(net) for net in self.nets]
        torch._foreach_mul_(hwm, 0.0)
        for r, (floats, _) in zip(ratios, students):
            torch._foreach_add_(hwm, floats, alpha=r)
        for dst, src in zip(hwm_int, students[0][1]):
            dst.copy_(src)

    @torch.no_grad()
    def fuse(self) -> None:
        """theta_i <- gamma theta_HWM + (1 - gamma) theta_i for every student, in place (optimizer state kept)."""
        gamma = self.opts.gamma
        hwm, hwm_int = self.state_tensors(self.hwm)
        for net in self.nets:
            floats, ints = self.state_tensors(net)
            torch._foreach_mul_(floats, 1.0 - gamma)
            torch._foreach_add_(floats, hwm, alpha=gamma)
            if gamma == 1.0:
                for dst, src in zip(ints, hwm_int):
                    dst.copy_(src)

    def hwm_logits(self, x: Tensor, ratios: list[float]) -> Tensor:
        """The HWM's logits: its own (filled) weights, no gradient (`code`), or the students' weights combined in the
        graph so CE(z_HWM) reaches student i scaled by r_i (`paper`)."""
        if self.opts.gradient == "code":
            with torch.no_grad():
                return self.hwm(x)
        students = [dict(net.named_parameters()) for net in self.nets]
        params = {name: sum(r * own[name] for r, own in zip(ratios, students))
                  for name, _ in self.hwm.named_parameters()}
        return torch.func.functional_call(self.hwm, params, (x,), strict=False)

    # -- training ----------------------------------------------------------------------------------
    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        o = self.opts
        epoch = int(progress.epoch)
        if o.fusion_unit == "epoch" and progress.batch == 0 and epoch >= 1 and (epoch - 1) % o.fusion_interval == 0:
            self.fuse()  # after epoch `epoch - 1`, as the official code fuses after that epoch's evaluation
        ratios = self.hybrid_ratios()
        self.build_hwm(ratios)
        logits = [net(x) for net, x in zip(self.nets, views)]
        z_hwm = self.hwm_logits(views[len(self.nets)], ratios)
        mean = torch.stack([*logits, z_hwm]).float().mean(0).detach()
        ce = sum(F.cross_entropy(z, target) for z in logits)
        kd = sum(kd_loss(z, mean, o.temperature) for z in logits)
        self.fuse_after_step = o.fusion_unit == "batch" and progress.batch % o.fusion_interval == 0
        return {"ce": o.omega * ce, "hwm_ce": (1.0 - o.omega) * F.cross_entropy(z_hwm, target), "kd": o.beta * kd}

    def after_step(self, step: int) -> None:
        if self.fuse_after_step:
            self.fuse()
            self.fuse_after_step = False

    # -- evaluation --------------------------------------------------------------------------------
    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"net{i}": net(x) for i, net in enumerate(self.nets)}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        logits["hwm"] = self.hwm(x)
        return logits

    def eval_names(self) -> list[str]:
        return [f"net{i}" for i in range(len(self.nets))] + ["ensemble", "hwm"]

    def members(self) -> list[str]:
        return [f"net{i}" for i in range(len(self.nets))]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        """Student i, or the HWM, as the plain backbone; None for the ensemble."""
        if name == "hwm":
            return self.hwm.state_dict()
        i = indexed(name, "net", len(self.nets))
        return None if i is None else self.nets[i].state_dict()
