"""The training loop: epochs of ``Method.train_step`` over a (seed, epoch)-ordered loader, a checkpoint
per epoch, exact resume, DistributedDataParallel under ``torchrun``, the run folder locked for the run."""
import contextlib
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..data import load_data
from ..data.errors import DataError
from ..defenses import METHODS, build_method, parse_options
from ..models import build_model
from ..modes import eval_mode
from ..nn.stoc_relu_ema import sync_stoc_relu, warn_skipped_updates
from ..output import write_json
from .checkpoint import (CheckpointError, apply_noise_attributes, capture_rng_state, load_checkpoint,
                         noise_attributes, restore_rng_state, save_checkpoint)
from .distributed import EpochSampler, barrier, gather_objects, rank_seed, setup_ranks, sum_over_ranks, teardown
from .progress import EpochProgress
from .rebuild import model_from_checkpoint, stored_classifier
from .run_folder import CHECKPOINT, METRICS, RunFolderError, claim_run_folder, remove_previous_run
from .starting_weights import check_starting_weights, classifier_checkpoint, load_init, start_checkpoint

# The arguments that define a run: resuming with any of them changed would not continue the same run.
# --epochs is not one: a resume may change it to any number >= the epochs the checkpoint has done
# (see _check_same_run); a schedule laid out on the total epochs is then laid out again on the new one.
RUN_DEFINING = ("method", "model", "data", "batch_size", "seed", "train_subset", "width", "options")


@dataclass
class TrainRun:
    """The arguments of one training run (what ``stochnet train`` parses)."""

    method: str
    model: str
    data: str
    epochs: int
    batch_size: int
    out: str
    data_dir: str | None = None
    seed: int = 0
    train_subset: int | None = None
    teacher: str | None = None
    init: str | None = None
    classifier: str | None = None
    width: float = 1.0
    eval_batch_size: int = 256
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.train_subset is not None and (not isinstance(self.train_subset, int) or self.train_subset < 1):
            raise ValueError(f"train_subset must be an integer >= 1, got {self.train_subset!r}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")


def train(run, stream=None, on_epoch_end=None):
    """Train ``run`` (a :class:`TrainRun`); returns the final metrics (also written to
    ``<out>/metrics.json`` by rank 0).

    Before any work the run folder is locked for the life of the run (a second training on it
    fails at once) and checked: a folder that holds a previous run's checkpoint or metrics is
    refused unless ``run.resume`` (continue it) or ``run.overwrite`` (its files are removed once
    this run's set-up has succeeded, before the first epoch). See :mod:`stochnet.train.run_folder`.

    Progress and log lines go to ``stream`` (default: stderr). ``on_epoch_end(epoch, summary)``
    is called after each epoch's checkpoint is written.
    """
    stream = sys.stderr if stream is None else stream
    with _setting_up():
        ranks = setup_ranks(run.device)
    try:
        with claim_run_folder(run, ranks):
            with _setting_up():
                state = _set_up(run, ranks, stream)
            return _epochs(run, ranks, stream, on_epoch_end, state)
    finally:
        teardown(ranks)


class SetupError(ValueError):
    """A value of the run that its set-up rejected (the device, the method's options, the model's
    width, the data): the user's error, which the command line reports as one line. A ValueError
    raised once the epochs have started is not one of these: it is a bug and keeps its traceback."""


@contextlib.contextmanager
def _setting_up():
    try:
        yield
    except (SetupError, CheckpointError, DataError, RunFolderError):
        raise  # the user's errors already, under their own names
    except ValueError as error:
        raise SetupError(str(error)) from error


def _log(ranks, stream, message):
    if ranks.is_main:
        print(message, file=stream, flush=True)


def _set_up(run, ranks, stream):
    """Everything before the first epoch: the resumed checkpoint, the data, the model and method."""
    out = Path(run.out)
    checkpoint_path = out / CHECKPOINT
    resumed = None
    resuming = run.resume and checkpoint_path.exists()
    check_starting_weights(run, resuming)
    if resuming:
        resumed = load_checkpoint(checkpoint_path)
        _check_same_run(resumed["args"], run, resumed["epoch"])
        _warn_epochs_changed(resumed["args"], run, resumed["epoch"], ranks, stream)
    elif run.resume:
        _log(ranks, stream, f"no checkpoint at {checkpoint_path}: starting afresh")
    init = None
    if resumed is not None:
        # The run's own weights stand in for its teacher's (loaded over them below anyway), so a
        # resumed run does not need the teacher checkpoint any more; nor the --init one.
        teacher_state = resumed["model"]
        for flag, given in (("--init", run.init), ("--classifier", run.classifier)):
            if given is not None:
                _log(ranks, stream, f"--resume: the weights come from {checkpoint_path}; {flag} {given!r} is not read again")
    else:
        init = start_checkpoint(run.init, "--init", run) if run.init else None
        # A method with a teacher (anis2) starts from its weights: --init stands in for --teacher.
        teacher_state = (start_checkpoint(run.teacher, "--teacher", run)["model"] if run.teacher
                         else init["model"] if init is not None else None)
    # A method trained in front of a frozen classifier (denoiser) takes it as its model: the one of
    # --classifier, or, resumed, the one the run's checkpoint holds.
    classifier = None
    if METHODS.get(run.method).needs_classifier:
        classifier = stored_classifier(resumed) if resumed is not None else classifier_checkpoint(run)

    bundle = load_data(run.data, run.data_dir, augment=True, seed=run.seed)
    train_set = _subset(bundle.train, run.train_subset, run.seed)
    sampler = EpochSampler(len(train_set), run.seed, ranks)
    # Drop a last partial batch: a batch of one has no per-channel statistics.
    loader = torch.utils.data.DataLoader(train_set, batch_size=run.batch_size, sampler=sampler,
                                         drop_last=len(sampler) >= run.batch_size)
    test_loader = torch.utils.data.DataLoader(bundle.test, batch_size=run.eval_batch_size)
    data_info = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
                 "image_size": bundle.image_size, "mean": list(bundle.mean), "std": list(bundle.std)}

    torch.manual_seed(run.seed)
    if classifier is not None:
        model = model_from_checkpoint(classifier, ranks.device)
    else:
        model = build_model(run.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                            mean=bundle.mean, std=bundle.std, width=run.width).to(ranks.device)
    if init is not None:
        # Into the plain architecture, before the method converts it: a method that adds noise
        # parameters or modules (pni, l2p, anis2) copies these weights and starts its own at their
        # initial values.
        load_init(model, init, run)
    example_input = torch.stack([bundle.test[i][0] for i in range(min(2, len(bundle.test)))]).to(ranks.device)
    method = build_method(run.method, model, dict(run.options), epochs=run.epochs, example_input=example_input,
                          teacher_state=teacher_state)
    student = method.model
    start_epoch, history = 0, []
    if resumed is not None:
        student.load_state_dict(resumed["model"])
        apply_noise_attributes(student, resumed["noise"])
        method.load_state_dict(resumed["method"])
        start_epoch, history = resumed["epoch"], list(resumed["history"])
    net = student
    if ranks.distributed:
        sync_stoc_relu(student)
        net = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)
    # After the model is built (and broadcast): every rank its own noise stream.
    if resumed is not None and len(resumed["rng"]) == ranks.world_size:
        restore_rng_state(resumed["rng"][ranks.rank])
    else:
        if resumed is not None:
            _log(ranks, stream, f"resuming on {ranks.world_size} process(es) after {len(resumed['rng'])}: "
                                "random streams are reseeded, the run will not replay exactly, and the "
                                "batch per step is --batch-size per process, so the total batch changes")
        _seed_everything(rank_seed(run.seed + start_epoch, ranks.rank))
    return SimpleNamespace(out=out, checkpoint_path=checkpoint_path, bundle=bundle, sampler=sampler, loader=loader,
                           test_loader=test_loader, data_info=data_info, method=method, student=student, net=net,
                           start_epoch=start_epoch, history=history,
                           init=run.init if resumed is None else resumed["args"].get("init"),
                           classifier=run.classifier if resumed is None else resumed["args"].get("classifier"),
                           classifier_args=classifier["args"] if classifier is not None else None)


def _epochs(run, ranks, stream, on_epoch_end, state):
    """The epochs of the run, a checkpoint after each, then the final test accuracy."""
    out, checkpoint_path, sampler, loader = state.out, state.checkpoint_path, state.sampler, state.loader
    method, student, net, start_epoch, history = (state.method, state.student, state.net, state.start_epoch,
                                                  state.history)
    if run.overwrite and ranks.is_main:
        removed = remove_previous_run(out)
        if removed:
            _log(ranks, stream, f"--overwrite: removed the previous run's {', '.join(removed)} from {out}")
    args = {**asdict(run), "init": state.init, "classifier": state.classifier, "data_info": state.data_info,
            "world_size": ranks.world_size}
    if state.classifier_args is not None:
        args["classifier_args"] = state.classifier_args  # what rebuilds the frozen classifier
    if start_epoch:
        _log(ranks, stream, f"resuming {checkpoint_path} after epoch {start_epoch}/{run.epochs}")
    started = time.perf_counter()
    for epoch in range(start_epoch, run.epochs):
        sampler.set_epoch(epoch)
        method.on_epoch_start(epoch)
        net.train()
        progress = EpochProgress(epoch, run.epochs, len(loader), stream=stream, enabled=ranks.is_main)
        for x, y in loader:
            step = method.train_step(net, x.to(ranks.device), y.to(ranks.device))
            progress.update(step["loss"], step["correct"], step["count"])
        local = progress.close()
        if ranks.is_main:
            warn_skipped_updates(student)  # for CUDA tensors, whose forward does not check
        method.on_epoch_end(epoch)
        summary = _pooled_summary(local, ranks)
        summary["epoch"] = epoch + 1
        history.append(summary)
        _log(ranks, stream, f"epoch {epoch + 1}/{run.epochs} done: loss {summary['loss']:.4f} "
                            f"acc {100 * summary['accuracy']:.2f}% {summary['images_per_s']:.1f} img/s "
                            f"({summary['seconds']:.1f}s)")
        rng = gather_objects(capture_rng_state(), ranks)
        if ranks.is_main:
            save_checkpoint(checkpoint_path, {"epoch": epoch + 1, "args": args, "model": student.state_dict(),
                                              "noise": noise_attributes(student), "method": method.state_dict(),
                                              "rng": rng, "history": history})
        barrier(ranks)
        if on_epoch_end is not None:
            on_epoch_end(epoch, summary)

    metrics = None
    if ranks.is_main:
        accuracy = evaluate_accuracy(student, state.test_loader, ranks.device)
        metrics = {"test_accuracy": accuracy, "epochs": run.epochs, "method": run.method, "model": run.model,
                   "data": run.data, "train_seconds_this_run": time.perf_counter() - started,
                   "world_size": ranks.world_size, "history": history, "checkpoint": str(checkpoint_path)}
        write_json(out / METRICS, metrics)
        _log(ranks, stream, f"test accuracy {100 * accuracy:.2f}% on {len(state.bundle.test)} images; "
                            f"wrote {out / METRICS}")
    barrier(ranks)
    return metrics


def evaluate_accuracy(model, loader, device):
    """Top-1 accuracy of ``model`` in eval mode over ``loader`` (one noise draw for a stochastic model)."""
    correct = total = 0
    with eval_mode(model), torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += y.numel()
    return correct / max(total, 1)


def _pooled_summary(local, ranks):
    loss_sum, correct, count, seconds = sum_over_ranks(
        [local["loss"] * local["images"], local["accuracy"] * local["images"], local["images"], local["seconds"]],
        ranks)
    seconds /= ranks.world_size
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "images": int(count),
            "seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}


def _subset(dataset, size, seed):
    """A fixed random subset of ``size`` samples (chosen by ``seed``), or the whole dataset."""
    if size is None or size >= len(dataset):
        return dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return torch.utils.data.Subset(dataset, sorted(chosen.tolist()))


def _seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _check_same_run(stored, run, epochs_done):
    current = asdict(run)
    changed = [f"{key} ({stored.get(key)!r} -> {current[key]!r})" for key in RUN_DEFINING
               if stored.get(key) != current[key]]
    # --init and --classifier may be left out on resume (their weights are in the checkpoint); another
    # one is another run.
    for flag in ("init", "classifier"):
        given = getattr(run, flag)
        if given is not None and stored.get(flag) != given:
            changed.append(f"{flag} ({stored.get(flag)!r} -> {given!r})")
    if changed:
        raise CheckpointError(f"--resume: the checkpoint in {run.out!r} is of another run; changed: {', '.join(changed)}")
    if run.epochs < epochs_done:
        planned = "" if stored.get("epochs") == epochs_done else f" of the {stored.get('epochs')!r} it was run for"
        raise CheckpointError(f"--resume: --epochs {run.epochs} is fewer than the {epochs_done} epoch(s){planned} the "
                              f"checkpoint in {run.out!r} has done: pass --epochs >= {epochs_done}")


def _warn_epochs_changed(stored, run, epochs_done, ranks, stream):
    """One line when a resume changes --epochs and the method lays a schedule out on the total epochs.

    The method is built for the new total (``build_method(epochs=run.epochs)``) and every schedule
    is a pure function of the epoch, so from the first resumed epoch on the lr (and ANIS²'s gamma)
    follow the new layout; the values the checkpoint ended with are not carried over."""
    old = stored.get("epochs")
    if old == run.epochs or epochs_done >= run.epochs:
        return  # the same layout, or no epoch left to train
    cls = METHODS[run.method]
    options = parse_options(cls.Options, dict(run.options))
    before, after = cls.epoch_schedules(options, old), cls.epoch_schedules(options, run.epochs)
    if not after:
        return
    names = " and ".join(after)
    _log(ranks, stream, f"--resume: --epochs {old} -> {run.epochs}: the {names} of --method {run.method} were laid "
                        f"out for {old} epochs ({'; '.join(before.values())}) and are now laid out for "
                        f"{run.epochs} ({'; '.join(after.values())}); epochs {epochs_done + 1}-{run.epochs} "
                        f"follow the new layout, not the values the checkpoint ended with")
