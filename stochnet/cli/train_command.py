"""``stochnet train``: train a model with one of the defenses' methods."""
from ..data import DATASETS
from ..defenses import METHODS, parse_options
from ..models import MODEL_NAMES
from .options import add_dataclass_options, collect
from .errors import user_values
from .output import check_writable


def _method_in(argv):
    """The value of ``--method`` in argv (either spelling), to add that method's own options."""
    for i, token in enumerate(argv):
        if token == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--method="):
            return token.split("=", 1)[1]
    return None


def add_parser(commands, argv):
    parser = commands.add_parser(
        "train", help="train a model with a defense method",
        description="Train a model; a checkpoint per epoch in --out (resumable with --resume), final test "
                    "accuracy in OUT/metrics.json. A --out that holds a run is refused unless --resume or "
                    "--overwrite; one training at a time holds a --out. Multi-process: torchrun "
                    "--nproc_per_node=N -m stochnet train ... Each method has its own options: see "
                    "'stochnet train --method M --help'.")
    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="training method")
    parser.add_argument("--model", default="mnist_cnn", choices=MODEL_NAMES,
                        help="architecture (default: mnist_cnn)")
    parser.add_argument("--data", default="mnist", choices=DATASETS,
                        help="dataset (default: mnist, the built-in 5000-image subset, no download)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the CIFAR datasets in torchvision's on-disk format")
    parser.add_argument("--epochs", type=int, required=True,
                        help="total epochs of the run; with --resume it may differ from the checkpoint's "
                             "(at least the epochs done): the run continues to the new total")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=256, help="batch size of the final test pass")
    parser.add_argument("--out", required=True, help="run folder: checkpoint.pt and metrics.json")
    previous = parser.add_mutually_exclusive_group()
    previous.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    previous.add_argument("--overwrite", action="store_true",
                          help="replace the run saved in --out (its checkpoint and metrics are removed when this "
                               "run starts); without --resume or --overwrite a --out that holds a run is refused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=None, metavar="N",
                        help="train on a fixed random subset of N training images")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="checkpoint of the deterministic teacher (anis2; refused by a method without one)")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start from the weights of a 'stochnet train' checkpoint of the same model, data and "
                             "width, trained by a method without noise modules (standard, adv, trades, gaussian); "
                             "a noisy method keeps its own noise parameters at their initial values. With --resume "
                             "of a saved run its checkpoint's weights win")
    parser.add_argument("--classifier", default=None, metavar="CKPT",
                        help="checkpoint of the trained classifier that --method denoiser trains its denoiser in "
                             "front of (kept frozen; its weights are stored in this run's checkpoint); needed by "
                             "denoiser, refused by the other methods. --model, --data and --width must be its")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the CIFAR ResNets")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    method = _method_in(argv)
    parser.set_defaults(option_names=[])
    if method in METHODS:
        names = add_dataclass_options(parser, METHODS[method].Options, f"options of --method {method}")
        parser.set_defaults(option_names=names)
    return parser


def run(args):
    from ..train import TrainRun, train

    check_writable(args.out)
    with user_values():
        set_by_user = collect(args, args.option_names)
        # Stored as the method parses them, so a resumed run compares values, not spellings.
        parsed = parse_options(METHODS[args.method].Options, set_by_user)
        options = {name: getattr(parsed, name) for name in set_by_user}
        run_args = TrainRun(method=args.method, model=args.model, data=args.data, epochs=args.epochs,
                            batch_size=args.batch_size, out=args.out, data_dir=args.data_dir, seed=args.seed,
                            train_subset=args.train_subset, teacher=args.teacher, init=args.init,
                            classifier=args.classifier, width=args.width,
                            eval_batch_size=args.eval_batch_size, resume=args.resume, overwrite=args.overwrite,
                            device=args.device, options=options)
    train(run_args)
    return 0
