"""KD, classic two-stage knowledge distillation (Hinton et al., 2015), as in the official OKDDip code's
train_kd.py (DefangChen/OKDDip-AAAI2020, L44-45, L93).

Stage 1 trains the teacher alone: the sweep's vanilla run of TEACHER on the same dataset and seed (`--backbones
STUDENT+TEACHER`), or weights trained elsewhere (`kd.teacher_weights=FILE`). Stage 2, this method, trains the
student on
    CE(z_s, y) + alpha * KD_T(z_t -> z_s),    alpha = 1, T = 3,
with the teacher frozen: eval mode (its running BN statistics), no gradient, weights fixed for the whole run.
The teacher's final weights by default; `kd.teacher_epoch=best` takes its best test epoch, as the official script
does (a selection on the test set, labelled in the table). Deployed model: the student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError, unknown
from bench.ranges import option
from bench.weights import read_weights
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss

TEACHER_EPOCHS = ("final", "best")
TEACHER_FILES = {"final": "deployed.safetensors", "best": "best.safetensors"}  # written by every finished run


@dataclass
class KDOptions:
    alpha: float = option(1.0, ge=0)
    temperature: float = option(3.0, gt=0, label="T")
    teacher_weights: str = field(default="", metadata={"label": "teacher file"})  # "": the sweep's vanilla run
    teacher_epoch: str = option("final", choices=("final", "best"), label="teacher epoch")  # final or best


def load_weights(path: Path, module: nn.Module, what: str) -> None:
    """A state dict of `module`'s architecture from a safetensors file (as `bench export` writes) or a torch file
    (loaded with weights_only); UsageError naming the file and the first key or shape that does not fit."""
    path = Path(path).expanduser()
    state = read_weights(path, what)
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise UsageError(f"{what}: {path} lacks '{key}' of the teacher network")
        if not isinstance(state[key], Tensor) or state[key].shape != value.shape:
            shape = tuple(state[key].shape) if isinstance(state[key], Tensor) else type(state[key]).__name__
            raise UsageError(f"{what}: {path} has '{key}' of shape {shape}, the teacher network {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UsageError(f"{what}: {path} has '{extra[0]}', which the teacher network lacks")
    module.load_state_dict(state)


@register_method("kd")
class KD(OnlineKDMethod):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "KD"
    Options = KDOptions
    headline = "student"
    partner_range = (1, 1)
    partner_role = "T"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: KDOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if not opts.alpha >= 0 or not opts.temperature > 0:
            raise UsageError(f"kd needs alpha >= 0 and temperature > 0, got {opts.alpha} and {opts.temperature}")
        if opts.teacher_epoch not in TEACHER_EPOCHS:
            raise unknown("kd.teacher_epoch", opts.teacher_epoch, TEACHER_EPOCHS)
        network = getattr(backbone, "network", lambda i: backbone)
        self.student = backbone()
        self.teacher = network(1)()
        names = getattr(backbone, "names", None) or []
        self.teacher_name = names[-1] if len(names) > 1 else None
        labels = getattr(backbone, "labels", None) or names  # the teacher run's folder (`@pretrained` where it is)
        self.teacher_folder = labels[-1] if len(labels) > 1 else None
        self.same_size = len(names) < 2 or names[0] == names[1]  # the teacher exports as the student's backbone
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    @classmethod
    def check_inputs(cls, opts: KDOptions, backbone: BackboneFactory) -> None:
        """A teacher file given by the user fits the teacher's backbone: checked before any run starts."""
        if opts.teacher_weights:
            network = getattr(backbone, "network", lambda i: backbone)
            load_weights(Path(opts.teacher_weights), network(1)(), "kd.teacher_weights")

    @classmethod
    def partner_note(cls, options: dict) -> str:
        return "best epoch" if options.get("teacher_epoch") == "best" else ""

    @classmethod
    def needs_partner_runs(cls, options: dict) -> bool:
        return not options.get("teacher_weights")

    def prepare_run(self, folder: Path) -> None:
        """The teacher's weights from the sweep's vanilla run of TEACHER (same dataset and seed), which the launcher
        finished before this run started: `<out>/<dataset>/<teacher>/vanilla/seed<k>/deployed.safetensors`."""
        if self.opts.teacher_weights:
            load_weights(Path(self.opts.teacher_weights), self.teacher, "kd.teacher_weights")
            return
        folder = Path(folder)
        teacher_run = folder.parents[2] / str(self.teacher_folder) / "vanilla" / folder.name
        load_weights(teacher_run / TEACHER_FILES[self.opts.teacher_epoch], self.teacher,
                     f"kd's teacher (the vanilla run {teacher_run})")

    def train(self, mode: bool = True) -> KD:
        super().train(mode)
        self.teacher.eval()  # frozen: its running BN statistics, always
        return self

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        z_s = self.student(views[0])
        with torch.no_grad():
            z_t = self.teacher(views[0])
        return {"ce": F.cross_entropy(z_s, target), "kd": self.opts.alpha * kd_loss(z_s, z_t, self.opts.temperature)}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        return {"student": self.student(x), "teacher": self.teacher(x)}

    def eval_names(self) -> list[str]:
        return ["student", "teacher"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        if name == "teacher" and self.same_size:
            return self.teacher.state_dict()
        return self.student.state_dict() if name == "student" else None
