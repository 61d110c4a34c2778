"""``stochnet certify``: Cohen et al.'s certified L2 radii of a model smoothed with Gaussian noise."""
import time
from pathlib import Path

import torch

from .errors import UsageError, user_values
from .output import check_writable, format_table, percent, write_json

DEFAULT_RADII = "0,0.25,0.5,0.75,1.0"


def add_parser(commands, argv):
    parser = commands.add_parser(
        "certify", help="certify a checkpoint's smoothed classifier (randomized smoothing)",
        description="CERTIFY of Cohen et al. on the first --limit test images: n0 noisy samples choose the "
                    "class, n more bound its probability (Clopper-Pearson at level alpha), the certified L2 "
                    "radius is sigma * Phi^-1(pA). Prints certified accuracy at each radius; writes "
                    "OUT/certify.json.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("--sigma", type=float, required=True, help="std of the Gaussian noise, in [0, 1] pixel units")
    parser.add_argument("--n0", type=int, default=100, help="samples that choose the class")
    parser.add_argument("--n", type=int, default=100000, help="samples of the probability bound")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability of the certificate")
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="certify the first N test images")
    parser.add_argument("--radii", default=DEFAULT_RADII, help=f"radii of the table (default: {DEFAULT_RADII})")
    parser.add_argument("--batch-size", type=int, default=1000, help="noisy copies per forward pass")
    parser.add_argument("--data-dir", default=None, help="data folder (default: the one the model was trained with)")
    parser.add_argument("--out", default="certify", help="folder of certify.json (default: ./certify)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def parse_radii(text):
    try:
        radii = sorted({float(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise UsageError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or radii[0] < 0:
        raise UsageError(f"--radii must be numbers >= 0, got {text!r}")
    return radii


def certified_accuracy(predictions, radii, labels, thresholds):
    """Fraction of samples predicted correctly (not abstaining) with a radius of at least each threshold."""
    correct = predictions == labels
    return [float((correct & (radii >= r)).float().mean()) for r in thresholds]


def run(args):
    from ..data import load_data
    from ..smoothing import Smooth
    from ..train import load_checkpoint, model_from_checkpoint
    from ..train.distributed import choose_device

    thresholds = parse_radii(args.radii)
    if not args.sigma > 0:
        raise UsageError(f"--sigma must be > 0, got {args.sigma}")
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {args.alpha}")
    for name in ("n0", "n", "limit", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_writable(args.out)
    with user_values():  # --device
        device = choose_device(args.device)
    state = load_checkpoint(args.checkpoint)
    run_args = state["args"]
    model = model_from_checkpoint(state, device)
    with user_values():  # --data-dir
        bundle = load_data(run_args["data"], args.data_dir or run_args["data_dir"], augment=False)
    count = min(args.limit, len(bundle.test))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(bundle.test, range(count)), batch_size=count)
    x, y = next(iter(loader))
    with user_values():  # Smooth checks --sigma (finite) and --batch-size
        smooth = Smooth(model, args.sigma, args.n, mode="prediction", batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    predictions, radii = smooth.certify(x.to(device), args.n0, args.n, args.alpha)
    seconds = time.perf_counter() - start
    predictions, radii = predictions.cpu(), radii.cpu()
    accuracies = certified_accuracy(predictions, radii, y, thresholds)
    rows = [{"radius": r, "certified_accuracy": a} for r, a in zip(thresholds, accuracies)]
    print(format_table(rows, (("radius", lambda row: f"{row['radius']:g}"),
                              ("certified acc %", lambda row: percent(row["certified_accuracy"])))))
    abstained = int((predictions < 0).sum())
    print(f"{count} images, sigma {args.sigma:g}, n0 {args.n0}, n {args.n}, alpha {args.alpha:g}: "
          f"{abstained} abstained, {seconds:.1f}s")
    report = {"checkpoint": str(args.checkpoint), "sigma": args.sigma, "n0": args.n0, "n": args.n,
              "alpha": args.alpha, "images": count, "seed": args.seed, "seconds": seconds, "abstained": abstained,
              "certified_accuracy": rows,
              "samples": [{"label": int(label), "prediction": int(p), "radius": float(r)}
                          for label, p, r in zip(y, predictions, radii)]}
    path = write_json(Path(args.out) / "certify.json", report)
    print(f"wrote {path}")
    return 0
