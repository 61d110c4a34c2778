"""Rebuild the trained model a checkpoint holds, from the run arguments stored in it."""
import torch

from ..defenses import build_method
from ..models import build_model
from ..models.denoised import classifier_entries
from .checkpoint import CheckpointError, apply_noise_attributes, non_finite_tensors


def model_from_checkpoint(state, device="cpu"):
    """The model of a loaded checkpoint (``load_checkpoint``), in eval mode on ``device``.

    The architecture is built as training built it: ``build_model`` from the stored model
    name, width and data shape (for a run trained in front of a frozen classifier, that classifier,
    rebuilt from its stored run arguments: :func:`stored_classifier`), then the stored method's own
    conversion (a stochastic student gets its noise modules, a denoiser run its denoiser); then the
    weights, buffers and scheduled noise attributes are loaded. A checkpoint whose weights do not
    fit that architecture, or are not finite (the model of a diverged run: its NaN outputs would
    also pass for noise), raises CheckpointError.
    """
    not_finite = non_finite_tensors(state["model"])
    if not_finite:
        raise CheckpointError(f"the checkpoint's weights are not finite: {len(not_finite)} tensor(s) hold NaN or "
                              f"inf, the first {not_finite[0]!r}")
    args = state["args"]
    info = args["data_info"]
    if "classifier_args" in args:
        model = model_from_checkpoint(stored_classifier(state))
    else:
        model = build_model(args["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                            mean=info["mean"], std=info["std"], width=args["width"])
    # Conversion reads only the shapes of a sample batch. The trained weights stand in for a
    # teacher's: a method that starts from one loads them, and they are loaded again below anyway.
    example_input = torch.zeros(2, info["in_channels"], info["image_size"], info["image_size"])
    method = build_method(args["method"], model, dict(args["options"]), epochs=args["epochs"],
                          example_input=example_input, teacher_state=state["model"])
    trained = method.model
    try:
        trained.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's weights do not fit a {args['method']} {args['model']} model: "
                              f"{str(error).splitlines()[0]}") from error
    apply_noise_attributes(trained, state["noise"])
    return trained.to(device).eval()


def stored_classifier(state):
    """The frozen classifier of a loaded checkpoint of a run trained in front of one (``--method
    denoiser``), as a checkpoint of its own that :func:`model_from_checkpoint` rebuilds: the run
    arguments stored for it (``args.classifier_args``), and its weights and noise attributes, the
    ``classifier.`` part of the run's (``stochnet.models.DenoisedClassifier``)."""
    return {"args": state["args"]["classifier_args"], "model": classifier_entries(state["model"]),
            "noise": classifier_entries(state["noise"])}
