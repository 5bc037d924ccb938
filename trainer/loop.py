"""The training loop both stages share: epochs, resume, validation, early stopping, checkpoints, logs.

A stage (:class:`Stage`) knows its models and how to take one optimizer step on a group of
micro-batches; this loop owns everything around that.  Progress is counted in optimizer steps;
the batch order of an epoch is a pure function of (seed, epoch), and every rank's RNG state is
saved with the training state, so a resumed run continues with exactly the steps, batches and
random numbers an uninterrupted run would have used.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import checkpointing as ckpt
from trainer.data import BucketBatchSampler, Experiment
from trainer.ddp import DistEnv

log = logging.getLogger(__name__)

SIMILARITY_METRIC = "val/speaker_similarity"  # what ``early_stop_on="similarity"`` selects (higher is better)
EARLY_STOP_ON = ("loss", "similarity")
_clock = time.monotonic  # the --max-minutes clock (tests replace it)


@dataclass
class Progress:
    epoch: int = 1  # the epoch to run (next)
    step_in_epoch: int = 0  # optimizer steps of `epoch` already done
    global_step: int = 0
    best: float = math.inf
    best_epoch: int = 0
    bad_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation
    early_stopped: bool = False  # a resume of an early-stopped run does nothing (use --restart)
    metric: str = "val/loss"  # the record key `best` refers to

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best"] = None if math.isinf(self.best) else self.best
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Progress":
        d = dict(d)
        d["best"] = math.inf if d.get("best") is None else float(d["best"])
        return cls(**d)


def early_stop_metric(stage: "Stage", cfg) -> tuple[str, bool]:
    """(record key, higher is better) that picks the best weights and drives early stopping."""
    if cfg.early_stop_on == "similarity":
        return SIMILARITY_METRIC, True
    if cfg.early_stop_on == "loss":
        return stage.metric, False
    from gsv.errors import GsvError

    raise GsvError(f"early_stop_on must be one of {', '.join(EARLY_STOP_ON)}, not {cfg.early_stop_on!r}")


class Stage:
    """What a training stage provides to :func:`run`."""

    name = "stage"
    grad_accum = 1
    metric = "val/loss"  # lower is better

    dataset: torch.utils.data.Dataset
    collate: Any
    exp: Experiment
    cfg: Any  # the stage's train config (CommonTrainConfig subclass)

    def modules(self) -> dict[str, torch.nn.Module]: ...
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def extra_state(self) -> dict[str, Any]: return {}
    def load_extra_state(self, state: dict[str, Any]) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def train_step(self, micro_batches: list, step: int) -> dict[str, float]: ...
    def make_val_dataset(self, items: list): ...
    def validate(self, batches: list) -> dict[str, float]: ...
    def release_state_dict(self) -> dict[str, torch.Tensor]: ...
    def write_release(self, kind: str, sd: dict[str, torch.Tensor], epoch: int, step: int, name: str) -> None: ...
    def synthesize(self, progress: Progress, writer) -> dict[str, float]: return {}

    def patience_start_step(self) -> int:
        """Validations up to this step never count against ``patience``: phases that train only some
        parts of the model come first, and what validation measures is not theirs to improve."""
        return 0

    def save_weights(self, kind: str, progress: Progress) -> None:
        """Weights of ``kind`` (best | last | epoch): the upstream-format release file (path and
        format chosen by :meth:`write_release`), plus our own copy of best/last under the stage dir."""
        sd = self.release_state_dict()
        # saved right after an epoch ended, progress already points at the next one
        epoch = max(1, progress.epoch - 1) if progress.step_in_epoch == 0 else progress.epoch
        if kind in ("best", "last"):
            meta = {"epoch": str(epoch), "step": str(progress.global_step), "kind": kind}
            ckpt.save_weights(self.exp.stage_dir(self.name) / f"{kind}.safetensors", sd, meta)
        self.write_release(kind, sd, epoch, progress.global_step, self.cfg.name or self.exp.name)


@dataclass
class RunResult:
    progress: Progress
    stopped_early: bool
    state_path: Path
    train_log: list[dict[str, float]] = field(default_factory=list)  # this process's step metrics, this run


def run(stage: Stage, cfg, exp: Experiment, dist: DistEnv, val_items: list) -> RunResult:
    stage_dir = exp.stage_dir(stage.name)
    state_path = stage_dir / ckpt.STATE_FILE
    progress = Progress()
    if cfg.resume and state_path.exists():
        state = ckpt.load_state(state_path)
        _restore(stage, state, dist)
        progress = Progress.from_dict(state["progress"])
        log.info("resuming %s at epoch %d, step %d", stage.name, progress.epoch, progress.global_step)
    else:
        torch.manual_seed(cfg.seed + dist.rank)
    metric, _ = early_stop_metric(stage, cfg)
    if progress.metric != metric:  # (resumed with another --early-stop-on: the old best is not comparable)
        if progress.global_step:
            log.info("%s: best weights are now chosen by %s (was %s)", stage.name, metric, progress.metric)
        progress.metric, progress.best, progress.best_epoch, progress.bad_validations = metric, math.inf, 0, 0
    sampler = BucketBatchSampler(stage.dataset.lengths(), cfg.batch_size, cfg.seed, dist.rank, dist.world_size)
    writer = _writer(exp.logs_dir(stage.name)) if dist.is_main else None
    if writer is not None and cfg.synth:
        from trainer.validate import SIMILARITY_TAGS

        # one TensorBoard chart with the similarity between its floor (noise) and ceiling (real speech)
        writer.add_custom_scalars({"speaker similarity": {"similarity vs ceiling and floor": ["Multiline",
                                                                                            list(SIMILARITY_TAGS)]}})
    val_batches = _val_batches(stage, val_items, cfg.batch_size) if dist.is_main else []
    stopped_early = False
    train_log: list[dict[str, float]] = []
    stop = progress.early_stopped
    deadline = _clock() + 60 * cfg.max_minutes if cfg.max_minutes else None
    if stop:
        log.info("%s stopped early before (epoch %d); nothing to do", stage.name, progress.best_epoch)
    try:
        while not stop and progress.epoch <= cfg.epochs:
            epoch = progress.epoch
            sampler.set_epoch(epoch)
            batches = sampler.batches()
            groups = [batches[i : i + stage.grad_accum] for i in range(0, len(batches), stage.grad_accum)]
            stage.on_epoch_start(epoch)
            bar = _bar(dist, len(groups), progress.step_in_epoch, f"{stage.name} epoch {epoch}")
            batch_iter = _batches(stage, [b for g in groups[progress.step_in_epoch :] for b in g], cfg.num_workers)
            for gi in range(progress.step_in_epoch, len(groups)):
                if cfg.max_steps is not None and progress.global_step >= cfg.max_steps:
                    stop = True
                    break
                if deadline is not None and dist.broadcast_flag(_clock() >= deadline):
                    log.info("%s: --max-minutes %g reached at step %d", stage.name, cfg.max_minutes, progress.global_step)
                    stop = True
                    break
                micro = [next(batch_iter) for _ in groups[gi]]
                metrics = stage.train_step(micro, progress.global_step)
                progress.global_step += 1
                progress.step_in_epoch = gi + 1
                train_log.append({"step": progress.global_step, **metrics})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k.replace("loss/", ""): f"{v:.3g}" for k, v in list(metrics.items())[:3]})
                if progress.global_step % max(1, cfg.log_every) == 0 or progress.global_step == 1:
                    metrics = dist.all_reduce_mean(metrics)
                    if writer is not None:
                        for k, v in metrics.items():
                            writer.add_scalar(k, v, progress.global_step)
                if cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0 and gi + 1 < len(groups):
                    _save(stage, progress, state_path, dist, cfg)
            if bar is not None:
                bar.close()
            if progress.step_in_epoch >= len(groups):  # the epoch is complete
                progress.epoch, progress.step_in_epoch = epoch + 1, 0
                _, early = _end_of_epoch(stage, cfg, progress, dist, writer, val_batches, epoch)
                stopped_early = early
                stop = stop or early or (cfg.max_steps is not None and progress.global_step >= cfg.max_steps)
                if not stop and progress.epoch <= cfg.epochs:
                    _save(stage, progress, state_path, dist, cfg)
            else:
                stop = True
        progress.early_stopped = progress.early_stopped or stopped_early
        _save(stage, progress, state_path, dist, cfg)
        if dist.is_main:
            stage.save_weights("last", progress)
            if (not val_batches or math.isinf(progress.best)) and progress.global_step > 0:
                stage.save_weights("best", progress)  # not validated (yet): best = last
        dist.barrier()  # leave together: a rank tearing down gloo while another still writes can abort it
    finally:
        if writer is not None:
            writer.close()
    return RunResult(progress, stopped_early, state_path, train_log)


def _end_of_epoch(stage: Stage, cfg, progress: Progress, dist: DistEnv, writer, val_batches, epoch: int):
    improved = early = False
    if dist.is_main:
        record: dict[str, Any] = {"epoch": epoch, "step": progress.global_step, "time": time.time()}
        if val_batches:
            with torch.random.fork_rng(devices=[]):  # validation must not move the training RNG
                torch.manual_seed(cfg.seed)
                record.update(stage.validate(val_batches))
        if cfg.synth:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                record.update(stage.synthesize(progress, writer))
        if writer is not None:
            for k, v in record.items():
                if k.startswith("val/"):
                    writer.add_scalar(k, v, progress.global_step)
        key, higher = early_stop_metric(stage, cfg)
        value = record.get(key)
        if value is not None and math.isfinite(value):
            if math.isinf(progress.best) or (value > progress.best if higher else value < progress.best):
                progress.best, progress.best_epoch, progress.bad_validations = float(value), epoch, 0
                improved = True
            elif progress.global_step > stage.patience_start_step():
                progress.bad_validations += 1
                early = bool(cfg.patience) and progress.bad_validations >= cfg.patience
        progress.history.append(record)
        log.info("%s epoch %d (step %d): %s", stage.name, epoch, progress.global_step,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith("val/")))
        if early:
            log.info("early stopping: no improvement of %s for %d validations", key, progress.bad_validations)
    early = dist.broadcast_flag(early)
    improved = dist.broadcast_flag(improved)
    if dist.is_main:
        if improved:
            stage.save_weights("best", progress)
        if cfg.save_every_epoch and epoch % cfg.save_every_epoch == 0:
            stage.save_weights("epoch", progress)
    return improved, early


def _save(stage: Stage, progress: Progress, path: Path, dist: DistEnv, cfg) -> None:
    rngs = dist.all_gather_object(ckpt.rng_state())
    if dist.is_main:
        state = {
            "format": ckpt.STATE_FORMAT, "format_version": ckpt.STATE_VERSION, "stage": stage.name,
            "progress": progress.to_dict(), "world_size": dist.world_size, "rng": rngs,
            "models": {k: m.state_dict() for k, m in stage.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in stage.optimizers().items()},
            "extra": stage.extra_state(), "config": _plain(asdict(cfg)),
        }
        ckpt.save_state(path, state)
    dist.barrier()


def _restore(stage: Stage, state: dict[str, Any], dist: DistEnv) -> None:
    from gsv.errors import CheckpointError

    if state.get("stage") != stage.name:
        raise CheckpointError(f"training state is of stage {state.get('stage')!r}, not {stage.name!r}")
    try:
        for k, m in stage.modules().items():
            m.load_state_dict(state["models"][k])
        for k, o in stage.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"the training state does not match this model/configuration ({str(e)[:200]}); "
                              "use --restart to start over") from None
    stage.load_extra_state(state.get("extra", {}))
    rngs = state.get("rng") or []
    if len(rngs) == dist.world_size:
        ckpt.set_rng_state(rngs[dist.rank])
    else:
        log.warning("training state was saved by %d processes, now %d: random streams restart", len(rngs), dist.world_size)
        torch.manual_seed(int(state["progress"]["global_step"]) + dist.rank)


def _batches(stage: Stage, batches: list[list[int]], num_workers: int):
    """Collated batches in the given order (worker processes optional; features are precomputed)."""
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(stage.dataset, batch_sampler=batches, collate_fn=stage.collate,
                                             num_workers=num_workers)
        return iter(loader)
    return (stage.collate([stage.dataset[i] for i in b]) for b in batches)


def _val_batches(stage: Stage, items: list, batch_size: int) -> list:
    ds = stage.make_val_dataset(items) if items else None
    if ds is None or len(ds) == 0:
        return []
    idx = list(range(len(ds)))
    return [stage.collate([ds[i] for i in idx[j : j + batch_size]]) for j in range(0, len(idx), batch_size)]


def _writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(path))


def _bar(dist: DistEnv, total: int, initial: int, desc: str):
    if not dist.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
