"""PNI (He et al. 2019): learnable weight-noise scales, trained with PGD adversarial training."""
import dataclasses

from ..nn import convert, pni_param_groups
from ..nn.pni import ALPHA_MODES
from .adv import AdversarialTraining
from .optim import make_optimizer
from .options import AdversarialOptions, option, require, with_default


@dataclasses.dataclass
class PNIOptions(AdversarialOptions):
    """PNI's public recipe (ResNet-20, CIFAR-10): 160 epochs, SGD lr 0.1 Nesterov momentum 0.9,
    weight decay 3e-4 (not on alpha), lr x0.1 at epochs 80 and 120 (fractions 0.5, 0.75); PGD-7,
    eps 8/255, step 0.01, random start, against the clean predictions, loss 0.5 clean + 0.5
    adversarial, adversarial training from epoch 5; alpha initialized to 0.25, layer-wise."""

    nesterov: bool = with_default(AdversarialOptions, "nesterov", True)
    weight_decay: float = with_default(AdversarialOptions, "weight_decay", 3e-4)
    step_size: float = with_default(AdversarialOptions, "step_size", 0.01)
    attack_target: str = with_default(AdversarialOptions, "attack_target", "prediction")
    clean_weight: float = with_default(AdversarialOptions, "clean_weight", 0.5)
    adv_start: int = with_default(AdversarialOptions, "adv_start", 5)
    alpha_mode: str = option("layer", "PNI noise scale: one per layer, per output channel or per weight",
                             choices=ALPHA_MODES)
    alpha_init: float = option(0.25, "initial noise scale alpha")

    def __post_init__(self):
        super().__post_init__()
        require(self.alpha_mode in ALPHA_MODES, "alpha_mode", f"one of {ALPHA_MODES}", self.alpha_mode)
        require(self.alpha_init >= 0, "alpha_init", ">= 0", self.alpha_init)


class PNITraining(AdversarialTraining):
    """PNI-W: every Conv2d / Linear becomes a PNIConv2d / PNILinear (``stochnet.nn.convert``)
    with noise ``W + alpha std(W) z`` on in train and eval mode, trained as
    :class:`~stochnet.defenses.adv.AdversarialTraining` with PNI's defaults. One optimizer;
    alpha sits in a parameter group without weight decay (``pni_param_groups``).
    """

    name = "pni"
    Options = PNIOptions

    def build_model(self, model, example_input, teacher_state):
        return convert(model, "pni", alpha_mode=self.options.alpha_mode, alpha_init=self.options.alpha_init)

    def build_optimizers(self):
        groups = pni_param_groups(self.model, self.options.weight_decay)
        return {"weights": make_optimizer(groups, self.options)}
