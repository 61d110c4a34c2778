"""The weights a run starts from: ``--init`` (any method), ``--teacher`` (a method with a teacher) and
``--classifier`` (a method trained in front of a frozen classifier), checked before any work."""
from ..defenses import METHODS, parse_options
from .checkpoint import CheckpointError, load_checkpoint, non_finite_tensors


def check_starting_weights(run, resuming):
    """--classifier for a method trained in front of one (given unless ``resuming`` a saved run) and
    for no other, nor --init or --teacher with it; --teacher only for a method that reads one; --init
    and --teacher not both (ValueErrors)."""
    cls = METHODS.get(run.method)
    if cls.needs_classifier:
        if run.classifier is None and not resuming:
            raise ValueError(f"--method {run.method} needs --classifier CKPT: the 'stochnet train' checkpoint of "
                             "the trained classifier it is trained in front of (kept frozen)")
        for flag, given in (("--init", run.init), ("--teacher", run.teacher)):
            if given is not None:
                raise ValueError(f"--method {run.method} takes its classifier from --classifier and starts its "
                                 f"own module afresh: {flag} would be ignored")
    elif run.classifier is not None:
        users = ", ".join(name for name, method in METHODS.items() if method.needs_classifier)
        raise ValueError(f"--method {run.method} is not trained in front of a classifier: --classifier would be "
                         f"ignored (it is for --method {users})")
    if run.teacher is None:
        return
    options = parse_options(cls.Options, dict(run.options))
    if not cls.uses_teacher(options):
        why = " with teacher_init=False" if hasattr(options, "teacher_init") else ""
        raise ValueError(f"--method {run.method} has no teacher{why}: --teacher would be ignored; "
                         f"to start from a checkpoint's weights pass --init CKPT")
    if run.init is not None:
        raise ValueError(f"--init and --teacher both give the weights --method {run.method} starts from: pass one")


def start_checkpoint(path, flag, run):
    """The checkpoint at ``path`` (given as ``flag``), after checking its architecture matches ``run``'s."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"{flag}: {error}") from error
    args = checkpoint["args"]
    mismatched = [f"{key} {args.get(key)!r} (this run: {getattr(run, key)!r})" for key in ("model", "data", "width")
                  if args.get(key) != getattr(run, key)]
    if mismatched:
        raise CheckpointError(f"{flag} {path!r} does not match this run's model: it has {', '.join(mismatched)}")
    return checkpoint


def classifier_checkpoint(run):
    """The --classifier checkpoint: of the run's model, data and width, and a classifier's (not itself
    a run trained in front of one)."""
    checkpoint = start_checkpoint(run.classifier, "--classifier", run)
    if "classifier_args" in checkpoint["args"]:
        raise CheckpointError(f"--classifier {run.classifier!r} is a {checkpoint['args']['method']!r} run, trained "
                              "in front of a classifier of its own: pass the checkpoint of a classifier")
    return checkpoint


def load_init(model, checkpoint, run):
    """Load the --init checkpoint's weights into the plain architecture ``model`` (strictly)."""
    state = checkpoint["model"]
    not_finite = non_finite_tensors(state)
    if not_finite:
        raise CheckpointError(f"--init {run.init!r}: the checkpoint's weights are not finite "
                              f"({len(not_finite)} tensor(s), the first {not_finite[0]!r})")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines or [""])[0]  # the keys or shapes that differ
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise CheckpointError(
            f"--init {run.init!r} holds a {checkpoint['args'].get('method')!r} model, which does not fit the plain "
            f"{run.model} that every method starts from: --init takes a checkpoint of a method without noise "
            f"modules (standard, adv, trades, gaussian); {detail}") from error
