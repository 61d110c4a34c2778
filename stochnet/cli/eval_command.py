"""``stochnet eval``: clean accuracy, robust accuracy and ASR of trained checkpoints under attacks."""
import argparse
import sys
import textwrap
import time
from pathlib import Path

import torch

from ..attacks.registry import (ATTACK_BUDGETS, ATTACK_NAMES, AttackSettings, crafting_attack, make_attack,
                                make_transfer_attack)
from .attack_specs import parse_attack_names
from .errors import UsageError, user_values
from .output import check_writable, format_table, percent, write_json
from .transfer_source import classifier_source, has_classifier, load_source


_DESCRIPTION = (
    "Evaluate each checkpoint against each attack: one table row per checkpoint x attack, "
    "and OUT/eval.json. Stochastic models are evaluated --repeats times (mean and std). "
    "A transfer attack, transfer-NAME, crafts its examples with the attack NAME on the "
    "--source-checkpoint model and scores them on each --checkpoint model; with "
    "--source-classifier, on each denoiser checkpoint's own classifier without its denoiser. "
    "A progress bar per checkpoint x attack (images attacked over all repeats, images/s, "
    "ETA) goes to stderr: plain lines when stderr is not a terminal.")


def add_parser(commands, argv):
    parser = commands.add_parser(
        "eval", help="attack trained checkpoints: clean / robust accuracy and ASR",
        description=textwrap.fill(_DESCRIPTION, 79),
        epilog=attack_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="CKPT",
                        help="a checkpoint written by 'stochnet train' (repeat to compare several)")
    parser.add_argument("--attacks", default="fgsm,pgd,eot-pgd",
                        help=f"comma-separated attacks among {', '.join(ATTACK_NAMES)}, or transfer-NAME for "
                             "any of them, e.g. transfer-pgd (default: fgsm,pgd,eot-pgd)")
    parser.add_argument("--source-checkpoint", default=None, metavar="CKPT",
                        help="the model transfer attacks craft their examples on: a checkpoint written by "
                             "'stochnet train' for the same input shape and classes (needed by transfer-NAME, "
                             "unless --source-classifier)")
    parser.add_argument("--source-classifier", action="store_true",
                        help="transfer attacks craft their examples on each --checkpoint's own classifier alone: "
                             "for a 'stochnet train --method denoiser' checkpoint, the frozen classifier without "
                             "the denoiser in front (every --checkpoint must be such a run)")
    parser.add_argument("--eps", type=float, default=None,
                        help="L-inf budget (default: 0.3 on MNIST, 8/255 on CIFAR)")
    parser.add_argument("--eps-l2", type=float, default=None, help="L2 budget of pgd-l2 (default: 2.0 MNIST, 0.5 CIFAR)")
    parser.add_argument("--alpha", type=float, default=None, help="step size of the iterative attacks "
                                                                     "(default: 2.5 * eps / steps)")
    parser.add_argument("--steps", type=int, default=10, help="steps of bim, pgd, pgd-l2, mim, eot-pgd")
    parser.add_argument("--eot-samples", type=int, default=10, help="noise draws per eot-pgd gradient on stochastic models (1 on deterministic ones)")
    parser.add_argument("--cw-steps", type=int, default=100, help="Adam steps per binary-search round of cw")
    parser.add_argument("--queries", type=int, default=500, help="query budget per sample of boundary")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats when the model (or a transfer attack's source) is stochastic (deterministic: 1)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N test images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", default=None, help="data folder (default: the one the model was trained with)")
    parser.add_argument("--out", default="eval", help="folder of eval.json (default: ./eval)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def attack_epilog():
    """``--help``'s list of the attacks with their default budgets, from the registry."""
    width = max(len(name) for name in ATTACK_NAMES) + 1
    lines = [f"  {name + ':':<{width}} {ATTACK_BUDGETS[name]}" for name in ATTACK_NAMES]
    return ("attacks and their default budgets (--eps, --eps-l2, --alpha, --steps,\n"
            "--eot-samples, --cw-steps and --queries change them):\n" + "\n".join(lines)
            + f"\n  {'transfer-NAME:':<{width}} the attack NAME, crafted on --source-checkpoint (or, with "
            f"--source-classifier,\n  {'':<{width}} on a denoiser checkpoint's bare classifier)")


def run(args):
    from ..train.distributed import setup_ranks, teardown

    names = parse_attack_names(args.attacks)
    transfers = _check_arguments(args, names)
    check_writable(args.out)
    settings = AttackSettings(eps=args.eps, eps_l2=args.eps_l2, alpha=args.alpha, steps=args.steps,
                              eot_samples=args.eot_samples, cw_steps=args.cw_steps, queries=args.queries)
    # Under torchrun each rank scores its shard of the images; rank 0 alone prints and writes.
    with user_values():  # --device
        ranks = setup_ranks(args.device)
    try:
        return _run(args, names, transfers, settings, ranks)
    finally:
        teardown(ranks)


def _run(args, names, transfers, settings, ranks):
    from ..data import load_data
    from ..eval.distributed import any_over_ranks, max_over_ranks, shard_indices, sum_counts
    from ..eval.progress import AttackProgress
    from ..eval.robust import robust_counts, summarize_counts
    from ..train import load_checkpoint, model_from_checkpoint
    from ..train.distributed import rank_seed

    say = print if ranks.is_main else _silent
    device = ranks.device
    states = [(path, load_checkpoint(path)) for path in args.checkpoint]  # every path checked before any work
    if args.source_classifier:
        _check_classifiers(states)
    shared = load_source(args.source_checkpoint, states, device) if transfers and args.source_checkpoint else None
    rows = []
    for path, state in states:
        run_args = state["args"]
        model = model_from_checkpoint(state, device)
        source = None
        if transfers:  # --source-checkpoint's model, or (--source-classifier) this checkpoint's classifier
            source = shared if shared is not None else classifier_source(path, state, model)
        source_label = _source_label(source) if source else None
        with user_values():  # --data-dir
            bundle = load_data(run_args["data"], args.data_dir or run_args["data_dir"], augment=False)
        count = len(bundle.test) if args.limit is None else min(args.limit, len(bundle.test))
        test = bundle.test if args.limit is None and not ranks.distributed else torch.utils.data.Subset(
            bundle.test, shard_indices(count, ranks.rank, ranks.world_size))
        loader = torch.utils.data.DataLoader(test, batch_size=args.batch_size)
        # Every rank takes the same decision (a rank's shard may be empty), so repeats agree.
        first = next(iter(loader), None)
        first_batch = first[0].to(device) if first is not None else None
        stochastic = any_over_ranks(first is not None and is_stochastic(model, first_batch), ranks)
        source_stochastic = any_over_ranks(first is not None and is_stochastic(source.model, first_batch),
                                           ranks) if source else None
        label = checkpoint_label(path, run_args)
        for name in names:
            torch.manual_seed(rank_seed(args.seed, ranks.rank))  # args.seed on rank 0, its own noise elsewhere
            transfer = crafting_attack(name) is not None
            with user_values():  # the attacks check --eps, --alpha, --steps, ... as they are built
                if transfer:
                    attack, eps = make_transfer_attack(name, source.model, run_args["data"], bundle.num_classes,
                                                       settings, source_stochastic)
                else:
                    attack, eps = make_attack(name, model, run_args["data"], bundle.num_classes, settings,
                                              stochastic)
            # A transfer attack varies from repeat to repeat when either model draws noise.
            repeats = args.repeats if stochastic or (transfer and source_stochastic) else 1
            start = time.perf_counter()
            # Rank 0 alone shows a bar, of its own shard's images (the ranks advance together).
            progress = AttackProgress(f"{label} {name}", len(test) * repeats, stream=sys.stderr,
                                      enabled=ranks.is_main)
            try:
                counts = robust_counts(model, attack, loader, repeats=repeats, device=device,
                                       allow_empty=ranks.distributed, progress=progress)
            finally:
                progress.close()
            seconds = max_over_ranks(time.perf_counter() - start, ranks)
            report = summarize_counts(sum_counts(counts, ranks))
            crafting = attack.source_attack if transfer else attack
            rows.append({"checkpoint": str(path), "label": label, "method": run_args["method"],
                         "model": run_args["model"], "data": run_args["data"], "stochastic": stochastic,
                         "attack": name, "eps": eps, "eot_samples": getattr(crafting, "eot_samples", None),
                         "source_checkpoint": source.path if transfer else None,
                         "source_label": source_label if transfer else None,
                         "source_stochastic": source_stochastic if transfer else None,
                         "seconds": seconds, **report})
            say(f"{label} {name}: done in {rows[-1]['seconds']:.1f}s", flush=True)
    if not ranks.is_main:
        return 0
    if shared:
        print(f"transfer-* rows: examples crafted on {_source_label(shared)}, scored on the row's model")
    elif transfers:
        print("transfer-* rows: examples crafted on the row's bare classifier (without its denoiser), "
              "scored on the row's model")
    print(format_table(rows, _COLUMNS))
    settings_json = {**vars(settings), "limit": args.limit, "seed": args.seed, "repeats": args.repeats,
                     "source_checkpoint": args.source_checkpoint, "source_classifier": args.source_classifier,
                     "processes": ranks.world_size}
    path = write_json(Path(args.out) / "eval.json", {"settings": settings_json, "rows": rows})
    print(f"wrote {path}")
    return 0


def _silent(*args, **kwargs):
    """``print`` on the ranks other than 0: they say nothing."""


def is_stochastic(model, x):
    """Whether two eval-mode passes on the same batch disagree: a noisy model is attacked and
    scored over several repeats, a deterministic one once."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def checkpoint_label(path, run_args):
    """A short row label: the run folder's name and what was trained."""
    return f"{Path(path).resolve().parent.name} ({run_args['method']} {run_args['model']})"


def _source_label(source):
    """The label of a transfer source: its checkpoint's, or ``RUN classifier (...)`` for the bare
    classifier inside a denoiser checkpoint."""
    if not source.classifier_of:
        return checkpoint_label(source.path, source.args)
    return f"{Path(source.path).resolve().parent.name} classifier ({source.args['method']} {source.args['model']})"


def _check_classifiers(states):
    """--source-classifier: every --checkpoint must hold a classifier behind a denoiser."""
    for path, state in states:
        if not has_classifier(state):
            raise UsageError(f"--source-classifier: --checkpoint {path} is a {state['args']['method']} run, which "
                             "has no classifier of its own to craft on (only --method denoiser checkpoints have one)")


def _check_arguments(args, names):
    """Check the options before any work; returns the transfer attacks among ``names``."""
    transfers = [name for name in names if crafting_attack(name) is not None]
    if args.source_checkpoint is not None and args.source_classifier:
        raise UsageError("--source-checkpoint and --source-classifier both name the model transfer attacks craft "
                         "on: pass one")
    if transfers and args.source_checkpoint is None and not args.source_classifier:
        raise UsageError(f"--attacks {','.join(transfers)} needs --source-checkpoint CKPT: the model whose "
                         "examples are transferred (or --source-classifier, for denoiser checkpoints: their "
                         "bare classifier)")
    for flag, given in (("--source-checkpoint", args.source_checkpoint is not None),
                        ("--source-classifier", args.source_classifier)):
        if given and not transfers:
            raise UsageError(f"{flag} is used by transfer attacks only: name one in --attacks, e.g. transfer-pgd")
    for name in ("steps", "eot_samples", "cw_steps", "queries", "repeats", "batch_size"):
        _check_positive(args, name)
    if args.limit is not None:
        _check_positive(args, "limit")
    return transfers


def _check_positive(args, name):
    value = getattr(args, name)
    if value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _mean_std(key):
    return lambda row: percent(row[key], row[key + "_std"] if row["repeats"] > 1 else None)


_COLUMNS = (
    ("model", lambda row: row["label"]),
    ("attack", lambda row: row["attack"]),
    ("eps", lambda row: "-" if row["eps"] is None else f"{row['eps']:.4g}"),
    ("clean %", _mean_std("clean_accuracy")),
    ("robust %", _mean_std("adversarial_accuracy")),
    ("ASR %", _mean_std("asr")),
    ("repeats", lambda row: str(row["repeats"])),
    ("images", lambda row: str(row["num_samples"])),
    ("seconds", lambda row: f"{row['seconds']:.1f}"),
)
