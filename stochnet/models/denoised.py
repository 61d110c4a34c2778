"""A frozen classifier behind a denoiser, as one module: ``classifier(denoiser(x))``."""
from torch import nn

# The classifier's entries in the pipeline's state dict and module names start with this.
CLASSIFIER_PREFIX = "classifier."


class DenoisedClassifier(nn.Module):
    """``classifier(denoiser(x))``, one module, so an attack on it differentiates through the denoiser
    (white box) and every attack and evaluation takes it as any model.

    The classifier is frozen: its parameters do not require gradients and it stays in eval mode
    (``train()`` sets the denoiser's mode only), so training the pipeline moves none of its weights,
    BatchNorm statistics or noise scales. ``forward(x, denoise_only=True)`` returns the denoised
    image instead of the logits (the training loss's forward, through a DistributedDataParallel
    wrapper too).
    """

    def __init__(self, denoiser, classifier):
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier.requires_grad_(False).eval()

    def train(self, mode=True):
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x, *, denoise_only=False):
        denoised = self.denoiser(x)
        return denoised if denoise_only else self.classifier(denoised)


def classifier_entries(entries):
    """The classifier's part of a pipeline's ``{name: value}`` mapping (its state dict, or its noise
    attributes by module name), keyed as in the bare classifier."""
    root = CLASSIFIER_PREFIX.rstrip(".")
    return {("" if name == root else name[len(CLASSIFIER_PREFIX):]): value for name, value in entries.items()
            if name == root or name.startswith(CLASSIFIER_PREFIX)}
