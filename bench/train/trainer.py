"""The training loop of one run: set-up, epochs, evaluation, checkpoints at epoch boundaries, and its summary."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.config import RunConfig
from bench.errors import UsageError
from bench.store import records, runs
from bench.store.identity import check_run_folder, config_record
from bench.store.provenance import count_params, forward_flops, git_commit, partner_label, resume_note, versions
from bench.sweep.variants import run_label, variant_key, variant_label
from bench.train.checkpoint import check_fits, read_checkpoint, rng_state, set_rng_state
from bench.train.compute import (
    amp_name,
    autocast_context,
    autocast_dtype,
    build_optimizer,
    device_name,
    make_step,
    optimizer_impl,
    resolve_device,
    set_cudnn_benchmark,
    use_branch_streams,
    use_cuda_graphs,
)
from bench.train.distributed import world
from bench.train.flops import record as flops_record
from bench.train.flops import run_step_flops
from bench.train.loggers import RunLoggers, metrics_csv
from bench.train.metrics import evaluate
from bench.train.schedule import Diverged, divergence_remedy, lr_at, warmup_factor
from methods.base import OnlineKDMethod, Progress, build_method, options_dict, resolve_options

CHECK_EVERY = 20  # optimizer steps between host-side divergence checks (one sync each)
EVAL_KEYS = ("top1_error", "top5_error", "ece", "nll")  # per eval model, every epoch (metrics.jsonl, summary)




def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------


class Trainer:
    """One run. `run()` trains (resuming when a checkpoint exists) and returns the summary."""

    def __init__(self, cfg: RunConfig, folder: Path, progress_bar: bool = True, runs_per_device: int = 1) -> None:
        self.cfg, self.folder, self.progress_bar = cfg, Path(folder), progress_bar
        self.runs_per_device = runs_per_device  # runs sharing this run's device (cost tables divide by it)

    # -- set-up --------------------------------------------------------------------------------
    def setup(self) -> None:
        from backbones import network_factory
        from bench.data import build_loaders, run_dataset

        cfg = self.cfg
        if cfg.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {cfg.epochs}")
        self.rank, self.world = world()
        if cfg.compute.threads:  # else what the launcher set: the cores divided by the runs sharing them
            torch.set_num_threads(cfg.compute.threads)
        self.device = resolve_device(cfg.compute.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.amp_dtype = autocast_dtype(cfg.compute.amp, self.device)
        self.cudnn_benchmark = set_cudnn_benchmark(cfg.compute.cudnn_benchmark, self.device)
        spec = run_dataset(cfg)
        seed_everything(cfg.seed)

        factory = network_factory(cfg.backbone, cfg.partners, spec.num_classes, spec.image_size,
                                  getattr(cfg, "pretrained", None), **cfg.backbone_options)
        self.method: OnlineKDMethod = build_method(cfg.method, factory, spec.num_classes, cfg.options)
        self.method.prepare_run(self.folder)
        memory_format = torch.channels_last if cfg.compute.channels_last else torch.contiguous_format
        self.method.to(self.device, memory_format=memory_format)
        networks = [factory.network(i)() for i in range(factory.partners + 1)]
        self.deployed_params = count_params(networks[0])
        self.partner_params = [count_params(net) for net in networks[1:]]
        self.flops = [forward_flops(net, spec.image_size) for net in networks]  # per image, for the cost table
        self.step_flops = run_step_flops(self.method, cfg, spec.image_size, spec.num_classes, self.device)
        self.train_loader, self.eval_loader, self.spec = build_loaders(
            spec, cfg.data, self.method.views, cfg.seed, self.device, cfg.compute.channels_last,
            self.rank, self.world, recipes=self.method.view_augment())
        self.train_module: torch.nn.Module = self.method
        if self.world > 1:  # gradients all-reduced; the method's forward() is its losses()
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compute.compile:
            self.train_module = torch.compile(self.train_module)
        self.optimizer_impl = optimizer_impl(cfg.compute.optimizer_impl, self.device)
        self.optimizer = build_optimizer(self.method.param_groups(), cfg.optim,
                                         self.optimizer_impl)
        self.cuda_graphs = use_cuda_graphs(cfg.compute.cuda_graphs, self.device, self.world, cfg.compute.compile) and \
            type(self.method).graphable
        self.branch_streams = use_branch_streams(cfg.compute.branch_streams, self.device, cfg.compute.compile)
        self.step_fn = make_step(self.train_module, self.optimizer, self.autocast, self.device, self.cuda_graphs,
                                 self.branch_streams)
        self.start_epoch, self.step, self.history, self.best, self.resumes = 0, 0, [], {}, []
        self.rejected: list[dict[str, Any]] = []  # checkpoints kept aside as not fitting (the run started over)
        self.first_runtime: dict[str, Any] | None = None  # where the run started (resumes may run elsewhere)

    def runtime_record(self) -> dict[str, Any]:
        """What changes a run's numbers without being one of its settings: CPU threads, the device, how many runs
        share it, and whether deterministic algorithms are on (config.yaml `runtime`, summary.json)."""
        return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
                "device": str(self.device), "device_name": device_name(self.device),
                "runs_per_device": self.runs_per_device, "deterministic": torch.are_deterministic_algorithms_enabled(),
                "cpu_count": os.cpu_count()}

    def runtime_note(self) -> str | None:
        """Why this run's numbers may differ from an uninterrupted run of the same settings (None when nothing)."""
        return resume_note(self.first_runtime, self.resumes)

    def autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        if str(self.start_epoch) == os.environ.get("OKD_BENCH_NO_SPACE_AT_EPOCH"):  # fault injection (tests): the
            raise OSError(errno.ENOSPC, f"No space left on device: '{self.folder / runs.CHECKPOINT}'")  # disk is full
        state = {"method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": self.start_epoch, "step": self.step, "history": self.history, "best": self.best,
                 "resumes": self.resumes, "rejected": self.rejected, "rng": rng_state(),
                 "runtime": self.first_runtime or self.runtime_record()}
        runs.atomic_write(self.folder / runs.CHECKPOINT, lambda f: torch.save(state, f), binary=True)
        runs.write_jsonl(self.folder / runs.METRICS, self.history)
        runs.write_text(self.folder / runs.METRICS_CSV, metrics_csv(self.history))

    def save_best_network(self) -> None:
        """The headline network at its best test epoch as `best.safetensors` (plain backbone keys), e.g. for a KD
        teacher taken at its best epoch (`kd.teacher_epoch=best`, as the official script does)."""
        state = self.method.network_state_dict(self.method.headline) if self.rank == 0 else None
        if state is None:
            return
        from safetensors.torch import save

        blob = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})
        runs.atomic_write(self.folder / runs.BEST_NETWORK, lambda f: f.write(blob), binary=True)

    def load_checkpoint(self) -> bool:
        """Resume from last.pt when it holds this very run. A checkpoint that does not fit (unreadable, malformed,
        another configuration's) is rejected whole before anything is copied from it, kept aside as
        last.pt.rejected-<time>, and the method, optimizer and RNG are rebuilt from scratch, so that the run is
        exactly a clean one."""
        path = self.folder / runs.CHECKPOINT
        if not path.exists():
            return False
        try:
            state = read_checkpoint(path, self.cfg.epochs, self.device)
            check_fits(path, state, self.method, self.optimizer)
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
        except Exception as err:  # nothing of a checkpoint that failed anywhere is kept: rebuild everything
            problem = err.problem if isinstance(err, records.Malformed) else \
                f"does not fit this run ({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]})"
            aside = path.with_name(f"{path.name}.rejected-{int(time.time())}")
            if self.rank == 0:
                path.replace(aside)
            print(f"warning: {path}: {problem}; kept as {aside.name}, the run starts over", file=sys.stderr)
            rejected = self.rejected + [{"file": aside.name, "problem": problem, "time": time.time()}]
            self.setup()
            self.rejected = rejected
            return False
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.best = list(state["history"]), dict(state["best"])
        self.resumes = list(state.get("resumes", []))
        self.rejected = list(state.get("rejected", []))
        self.first_runtime = state.get("runtime") if isinstance(state.get("runtime"), dict) else None
        return True

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int, bar) -> dict[str, float]:
        method, loader = self.method, self.train_loader
        method.train()
        base_lr = lr_at(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = base_lr * group.get("lr_scale", 1.0)
        steps = len(loader)
        warming = epoch < (getattr(self.cfg.optim, "warmup_epochs", None) or 0.0)
        sums: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}  # the method's step_stats, summed
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_terms: torch.Tensor | None = None
        for i, (views, target) in enumerate(loader.epoch(epoch)):
            progress = Progress(epoch + i / steps, self.step, self.cfg.rampup_epochs, batch=i)
            if warming:  # per step (a captured CUDA graph is dropped when its lr changes: warm-up steps run eagerly)
                factor = warmup_factor(self.cfg, epoch + i / steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)
            terms, total = self.step_fn(views, target, progress)
            finite = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()])
            first_bad = (bad_step < 0) & ~finite.all()
            bad_step = torch.where(first_bad, self.step, bad_step)
            bad_terms = ~finite if bad_terms is None else torch.where(first_bad, ~finite, bad_terms)
            self.step += 1
            method.after_step(self.step)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            sums["total"] = sums.get("total", 0.0) + total.detach().float()
            for name, value in method.step_stats().items():
                stats[name] = stats.get(name, 0.0) + value
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
                if self.world > 1:  # every rank stops together when any diverged
                    torch.distributed.all_reduce(bad_step, op=torch.distributed.ReduceOp.MAX)
                if int(bad_step) >= 0:
                    names = [n for n, bad in zip(terms, bad_terms.tolist()) if bad]
                    raise Diverged(epoch + 1, int(bad_step), names, divergence_remedy(self.cfg))
            if bar is not None:
                bar.update(1)
        self.epoch_stats = {name: float(v) / steps for name, v in stats.items()}
        return {name: float(v) / steps for name, v in sums.items()}

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """({eval model: top1_error, top5_error, ece, nll}, diversity of the method's members) on the test split."""
        return evaluate(self.method, self.eval_loader, self.autocast, self.device, self.world, self.spec.num_classes)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.cfg.options = options_dict(resolve_options(self.cfg.method, self.cfg.options))
        check_run_folder(self.folder, self.cfg, force=False)
        self.setup()
        main = self.rank == 0
        if main:
            self.folder.mkdir(parents=True, exist_ok=True)
            runs.remove_stale_temp_files(self.folder)
            self.cfg.runtime = self.runtime_record()
            runs.write_text(self.folder / runs.CONFIG, yaml.safe_dump(config_record(self.cfg), sort_keys=False))
        if self.load_checkpoint() and self.start_epoch < self.cfg.epochs:
            self.resumes.append({"epoch": self.start_epoch, "job_id": os.environ.get("SLURM_JOB_ID"),
                                 **self.runtime_record()})
        if main:
            runs.write_jsonl(self.folder / runs.METRICS, self.history)
            runs.write_text(self.folder / runs.METRICS_CSV, metrics_csv(self.history))
            (self.folder / runs.SUMMARY).unlink(missing_ok=True)
        cfg = self.cfg
        bar = self._bar()
        self.loggers = RunLoggers.open(cfg, self.folder, self.history) if main else RunLoggers(cfg, self.folder)
        try:
            if cfg.method in os.environ.get("OKD_BENCH_FAIL_METHODS", "").split(","):  # fault injection (tests)
                raise RuntimeError(f"injected failure of {cfg.method} (OKD_BENCH_FAIL_METHODS)")
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                losses = self.train_epoch(epoch, bar)
                train_s = time.perf_counter() - t0
                errors, spread = self.evaluate()
                record = {"epoch": epoch + 1, "lr": lr_at(cfg, epoch), "step": self.step, "loss": losses,
                          **{key: {k: v.get(key) for k, v in errors.items()} for key in EVAL_KEYS},
                          **({"diversity": spread} if spread else {}),
                          **({"stats": self.epoch_stats} if self.epoch_stats else {}),
                          "epoch_s": time.perf_counter() - t0,
                          "images_per_s": self.world * self.train_loader.num_samples / max(train_s, 1e-9)}
                self.history.append(record)
                for name, err in errors.items():
                    if name not in self.best or err["top1_error"] < self.best[name]["top1_error"]:
                        self.best[name] = {**err, "epoch": epoch + 1}
                        if name == self.method.headline:
                            self.save_best_network()
                self.start_epoch = epoch + 1
                self.save_checkpoint()
                self.loggers.log_epoch(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{losses['total']:.3f}",
                                    err=f"{errors[self.method.headline]['top1_error']:.2f}%")
        except Diverged as div:
            return self.loggers_closed(self.finish("diverged", divergence={
                "epoch": div.epoch, "step": div.step, "terms": div.terms, "message": str(div)}))
        except Exception as err:
            self.loggers_closed(self.finish("failed", error=f"{type(err).__name__}: {err}",
                                            failure=records.failure_kind(err)))
            raise
        except BaseException:  # interrupted: the trackers flush what they have; the next start continues them
            self.loggers.close(None)
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.loggers_closed(self.finish("done"))

    def loggers_closed(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.loggers.close(summary)
        return summary

    def _bar(self):
        if not self.progress_bar or self.rank != 0:
            return None
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.epochs * len(self.train_loader)
        return tqdm(total=total, initial=self.start_epoch * len(self.train_loader), leave=False, dynamic_ncols=True,
                    disable=None, mininterval=0.5, unit="step",
                    desc=run_label(cfg))

    def finish(self, status: str, **extra: Any) -> dict[str, Any]:
        cfg = self.cfg
        last = self.history[-1] if self.history else {}
        final = {name: {key: last[key][name] for key in EVAL_KEYS if name in (last.get(key) or {})}
                 for name in last.get("top1_error", {})}
        best_epoch = (self.best.get(self.method.headline) or {}).get("epoch")
        best = self.best
        if self.spec.num_classes <= 5:  # every test image is in its top 5: a top-5 error says nothing (missing)
            final = {name: {**errs, "top5_error": None} for name, errs in final.items()}
            best = {name: {**errs, "top5_error": None} for name, errs in best.items()}
        summary = {
            "method": cfg.method, "backbone": cfg.backbone, "dataset": cfg.dataset, "seed": cfg.seed,
            "status": status, "headline_model": self.method.headline, "eval_models": self.method.eval_names(),
            "final": final, "best": best, "num_classes": self.spec.num_classes, "epochs": cfg.epochs,
            "epochs_done": len(self.history),
            "wall_clock_s": sum(r["epoch_s"] for r in self.history),
            "images_per_s": (float(np.mean([r["images_per_s"] for r in self.history])) if self.history else None),
            "device": str(self.device), "device_name": device_name(self.device),
            "amp": amp_name(self.amp_dtype),
            "channels_last": cfg.compute.channels_last, "compile": cfg.compute.compile,
            "optimizer_impl": self.optimizer_impl, "world_size": self.world,
            "cuda_graphs": self.cuda_graphs and not getattr(self.step_fn, "failed", None),
            "cudnn_benchmark": self.cudnn_benchmark, "runs_per_device": self.runs_per_device,
            "branch_streams": self.branch_streams, "runtime": self.first_runtime or self.runtime_record(),
            "runtime_note": self.runtime_note(),
            "params": {"deployed": self.deployed_params, "training_total": count_params(self.method, True),
                       "all": count_params(self.method)},
            "partners": cfg.partners, "partner_params": self.partner_params,
            "pretrained": dict(getattr(cfg, "pretrained", None) or {}),
            "flops": {"deployed": self.flops[0], "partners": self.flops[1:]},
            **flops_record(self.step_flops, self.step),
            "budget": dict(getattr(cfg, "budget", None) or {}),
            "two_stage": bool(cfg.partners) and type(self.method).needs_partner_runs(cfg.options),
            "partner_label": partner_label(type(self.method), cfg.partners, cfg.options),
            "options": dataclasses.asdict(self.method.opts), "resumes": self.resumes,
            "rejected_checkpoints": self.rejected,
            "diversity": {"final": last.get("diversity"),
                          "best": (self.history[best_epoch - 1].get("diversity") if best_epoch else None)},
            "versions": versions(),
            "display_name": type(self.method).display_name or cfg.method, "plugins": cfg.loaded_plugins,
            "variant": cfg.variant, "row": variant_key(cfg.method, cfg.variant), "protocol": cfg.protocol,
            "variant_label": variant_label(type(self.method).Options, cfg.variant, getattr(cfg, "budget", None)),
            "default_headline": type(self.method).headline,
            "image_size": self.spec.image_size, "mean": list(self.spec.mean), "std": list(self.spec.std),
            "git_commit": git_commit(),
            **extra,
        }
        if self.world > 1:
            summary["ranks_in_sync"] = self.ranks_in_sync()
        if self.rank == 0:
            if status == "done":
                summary["deployed"] = self.export_deployed(summary)
            runs.write_json(self.folder / runs.SUMMARY, summary)
        return summary

    def export_deployed(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        """The headline model as a plain backbone beside the summary; a failure is a warning, not a failed run."""
        from bench.results.export import write_deployed

        try:
            return write_deployed(self.method, summary, self.folder, self.spec, self.cfg.backbone_options)
        except Exception as err:
            print(f"warning: could not write the deployed network of {self.folder}: {type(err).__name__}: {err}",
                  file=sys.stderr)
            return None

    def ranks_in_sync(self) -> bool:
        """Whether every rank ends with the same trainable parameters (DDP kept them in step)."""
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in self.method.parameters() if p.requires_grad]).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)


def train_run(cfg: RunConfig, folder: Path, progress_bar: bool = True, runs_per_device: int = 1) -> dict[str, Any]:
    """Train one run into `folder` and return its summary (also written to summary.json)."""
    return Trainer(cfg, folder, progress_bar=progress_bar, runs_per_device=runs_per_device).run()
