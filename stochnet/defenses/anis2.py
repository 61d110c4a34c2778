"""ANIS² (Tan, Elovici, Binder): a stochastic student with StocReLUEMA activations, initialized
from a deterministic teacher and fine-tuned with adversarial training while its noise grows."""
import dataclasses

from ..nn import StocReLUEMA, convert
from .adv import AdversarialTraining
from .options import AdversarialOptions, option, require, with_default


@dataclasses.dataclass
class ANIS2Options(AdversarialOptions):
    """ANIS²'s published settings: EMA weight alpha = 0.5 (``momentum``), gamma raised by
    ``k = r (gamma_max - gamma_init) / T`` every ``r`` epochs, fine-tuning with adversarial
    training from the teacher's weights. Unpublished, chosen here: gamma_init 0 (the student
    starts as the teacher's function), gamma_max 0.25 (final noise std half the channel's
    activation std, near Learn2Perturb's 0.25 on batch-normalized features), r = 1 (the
    smoothest ramp); fine-tuning SGD lr 0.01, momentum 0.9, weight decay 2e-4, lr x0.1 at half
    and three quarters; PGD-7, L-inf eps 8/255, step 2/255, random start, on adversarial
    examples only with the true labels (the slides' description of AT)."""

    lr: float = with_default(AdversarialOptions, "lr", 0.01)
    weight_decay: float = with_default(AdversarialOptions, "weight_decay", 2e-4)
    gamma_init: float = option(0.0, "noise variance multiplier gamma at the start")
    gamma_max: float = option(0.25, "gamma reached after the last epoch")
    r: int = option(1, "gamma update interval in epochs")
    ema_momentum: float = option(0.5, "EMA weight of each batch's channel std in sigma (alpha)")
    teacher_init: bool = option(True, "initialize the student from the teacher's weights "
                                "(False: the ablation without teacher initialization)")
    ema: bool = option(True, "adapt sigma by the EMA (False: the ablation without EMA, sigma = the "
                       "last training batch's channel std)")
    adversarial: bool = option(True, "fine-tune with adversarial training (False: the ablation without AT)")

    def __post_init__(self):
        super().__post_init__()
        require(self.gamma_init >= 0, "gamma_init", ">= 0", self.gamma_init)
        require(self.gamma_max >= self.gamma_init, "gamma_max", f">= gamma_init ({self.gamma_init})",
                self.gamma_max)
        require(self.r >= 1, "r", ">= 1", self.r)
        require(0 < self.ema_momentum <= 1, "ema_momentum", "in (0, 1]", self.ema_momentum)


def anis2_gamma(epochs_done, gamma_init, gamma_max, r, epochs):
    """gamma after ``epochs_done`` epochs: ``gamma_init + k * (epochs_done // r)``,
    ``k = r (gamma_max - gamma_init) / epochs``; it reaches gamma_max at the end when r divides
    ``epochs`` (Algorithm 1: ``gamma += k`` after every epoch t with ``t mod r = 0``)."""
    k = r * (gamma_max - gamma_init) / epochs
    return gamma_init + k * (epochs_done // r)


class ANIS2(AdversarialTraining):
    """ANIS²: the student ``convert(model, "anis2", example_input=...)``, every ReLU a StocReLUEMA
    ``relu(x + sqrt(gamma) sigma_c z)``.

    - Teacher initialization: ``teacher_state`` (the teacher's state dict, same architecture)
      is loaded into the student; only the StocReLUEMA buffers may be missing from it.
      ``teacher_init=False`` ignores it and fine-tunes from the model's own weights.
    - gamma: during epoch e it is ``anis2_gamma(e)``; ``on_epoch_end(e)`` raises it to
      ``anis2_gamma(e + 1)``, so the trained model ends at gamma_max. It is set on every
      StocReLUEMA and kept in the method's state (``.gamma`` is no buffer of the module).
    - ``ema=False`` (ablation): EMA weight 1, so sigma is each training batch's channel std and,
      in eval mode, the last training batch's; ``ema_momentum`` is then unused.
    - ``adversarial=False`` (ablation): plain CE fine-tuning of the noisy student.
    - sigma follows every train-mode forward: the adversarial batch, and the clean batch too
      when ``clean_weight > 0``; it stays frozen in eval mode (the StocReLUEMA convention),
      so the attacks do not move it.
    """

    name = "anis2"
    Options = ANIS2Options

    @classmethod
    def epoch_schedules(cls, options, epochs):
        schedules = super().epoch_schedules(options, epochs)
        if options.gamma_max != options.gamma_init:
            o = options
            k = o.r * (o.gamma_max - o.gamma_init) / epochs
            final = anis2_gamma(epochs, o.gamma_init, o.gamma_max, o.r, epochs)
            schedules["gamma ramp"] = (f"gamma {o.gamma_init:g} + {k:.4g} every {o.r} epoch(s), "
                                       f"{final:.4g} after epoch {epochs}")
        return schedules

    @classmethod
    def uses_teacher(cls, options):
        return options.teacher_init

    def build_model(self, model, example_input, teacher_state):
        o = self.options
        if o.teacher_init and teacher_state is None:
            raise ValueError("anis2 needs teacher_state (the teacher's state dict) to initialize the student; "
                             "pass teacher_init=False for the ablation without teacher initialization")
        student = convert(model, "anis2", example_input=example_input, gamma=o.gamma_init,
                          momentum=o.ema_momentum if o.ema else 1.0)
        if o.teacher_init:
            self._load_teacher(student, teacher_state)
        return student

    @staticmethod
    def _load_teacher(student, teacher_state):
        if not isinstance(teacher_state, dict):
            raise TypeError(f"teacher_state must be a state dict, got {type(teacher_state).__name__}")
        own = {f"{name}.{buffer}" for name, m in student.named_modules() if isinstance(m, StocReLUEMA)
               for buffer, _ in m.named_buffers(recurse=False)}
        missing, unexpected = student.load_state_dict(teacher_state, strict=False)
        missing = sorted(set(missing) - own)
        if missing or unexpected:
            raise ValueError(f"teacher_state does not fit the student: missing keys {missing}, "
                             f"unexpected keys {sorted(unexpected)}")

    def gamma_after(self, epochs_done):
        o = self.options
        return anis2_gamma(epochs_done, o.gamma_init, o.gamma_max, o.r, self.epochs)

    def set_gamma(self, gamma):
        self.gamma = gamma
        for module in self.model.modules():
            if isinstance(module, StocReLUEMA):
                module.gamma = gamma

    def apply_schedule(self, epoch):
        super().apply_schedule(epoch)
        self.set_gamma(self.gamma_after(epoch))

    def on_epoch_end(self, epoch):
        super().on_epoch_end(epoch)
        self.set_gamma(self.gamma_after(epoch + 1))

    def adversarial(self):
        return self.options.adversarial and super().adversarial()

    def state_dict(self):
        return {**super().state_dict(), "gamma": self.gamma}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.set_gamma(float(state["gamma"]))
