"""Learn2Perturb (Jeddi et al. 2020): learned per-element feature noise, alternating updates of
the network weights and the noise scales, with PGD adversarial training."""
import dataclasses

import torch

from ..nn import convert, learn2perturb_regularizer, split_learn2perturb_params
from ..nn.perturbation import PerturbationInjection
from .adv import AdversarialTraining
from .optim import make_optimizer
from .options import AdversarialOptions, option, require, with_default


@dataclasses.dataclass
class L2POptions(AdversarialOptions):
    """Learn2Perturb's published settings (paper and public code): SGD lr 0.01, Nesterov
    momentum 0.9, weight decay 1e-4 on the weights (none on theta), lr x0.1 at epochs 150 and 250
    of 350 (fractions 3/7, 5/7); theta initialized to 0.25 and clamped to >= 0.01; regularizer
    weight 1e-4; noise from epoch 20 (the paper; the code uses 10); PGD-7, eps 8/255, step 0.01,
    random start, against the clean predictions, 0.5 clean + 0.5 adversarial, from epoch 20."""

    lr: float = with_default(AdversarialOptions, "lr", 0.01)
    nesterov: bool = with_default(AdversarialOptions, "nesterov", True)
    lr_milestones: tuple = with_default(AdversarialOptions, "lr_milestones", (3 / 7, 5 / 7))
    step_size: float = with_default(AdversarialOptions, "step_size", 0.01)
    attack_target: str = with_default(AdversarialOptions, "attack_target", "prediction")
    clean_weight: float = with_default(AdversarialOptions, "clean_weight", 0.5)
    adv_start: int = with_default(AdversarialOptions, "adv_start", 20)
    theta_init: float = option(0.25, "initial noise scale theta")
    theta_min: float = option(0.01, "theta is clamped to >= theta_min after every theta step")
    reg_weight: float = option(1e-4, "weight gamma of the regularizer -sum(sqrt(theta)) / tau")
    noise_start: int = option(20, "first epoch (0-based) with noise; before it theta is held at 0")

    def __post_init__(self):
        super().__post_init__()
        require(self.theta_init >= self.theta_min, "theta_init", f">= theta_min ({self.theta_min})",
                self.theta_init)
        require(self.theta_min > 0, "theta_min", "> 0 (the regularizer's gradient is infinite at 0)",
                self.theta_min)
        require(self.reg_weight >= 0, "reg_weight", ">= 0", self.reg_weight)
        require(self.noise_start >= 0, "noise_start", ">= 0", self.noise_start)


class Learn2Perturb(AdversarialTraining):
    """Learn2Perturb on the student ``convert(model, "l2p", example_input=...)``.

    Each step, as the public code does once noise is on: (1) a theta step on the regularizer
    alone, ``reg_weight * learn2perturb_regularizer(model, k)`` with ``k`` the noisy epochs so
    far (the harmonic tau starts at H_1 = 1, where the code divides by H_0 = 0); (2) the
    training loss (clean CE, or 0.5 clean + 0.5 PGD from ``adv_start``) back-propagated once,
    then a step of the weight optimizer and a step of the theta optimizer, so theta also
    follows the loss. theta is clamped to ``theta_min`` after every theta step. The theta
    optimizer is of the weights' kind (SGD with the same momentum and Nesterov flag in the
    code) with the same lr and schedule and no weight decay; the two own disjoint parameters.

    Noise warm-up: before ``noise_start`` every theta is held at 0 (the modules add nothing;
    their draws are wasted but the model is the deterministic network) and never stepped; at
    ``noise_start`` theta is reset to ``theta_init``, the value the public code keeps unused
    until then. Noise is drawn per sample (the code shares one draw across the batch).
    """

    name = "l2p"
    Options = L2POptions

    def __init__(self, model, options, **kwargs):
        self.noise_on = True  # convert sets theta to theta_init; the schedule zeroes it for a warm-up
        super().__init__(model, options, **kwargs)

    def build_model(self, model, example_input, teacher_state):
        o = self.options
        return convert(model, "l2p", example_input=example_input, init=o.theta_init, theta_min=o.theta_min)

    def build_optimizers(self):
        weights, thetas = split_learn2perturb_params(self.model)
        return {"weights": make_optimizer(weights, self.options),
                "theta": make_optimizer(thetas, self.options, weight_decay=0.0)}

    def injections(self):
        return [m for m in self.model.modules() if isinstance(m, PerturbationInjection)]

    def apply_schedule(self, epoch):
        super().apply_schedule(epoch)
        noisy = epoch >= self.options.noise_start
        if noisy != self.noise_on:
            with torch.no_grad():
                for module in self.injections():
                    if noisy:
                        module.theta.fill_(self.options.theta_init)
                    else:
                        module.theta.zero_()
            self.noise_on = noisy

    def train_step(self, model, x, y):
        self.check_batch(model, x, y)
        model.train()
        weights, thetas = self.optimizers["weights"], self.optimizers["theta"]
        if self.noise_on:
            noisy_epochs = self.epoch - self.options.noise_start + 1
            thetas.zero_grad(set_to_none=True)
            (self.options.reg_weight * learn2perturb_regularizer(self.model, noisy_epochs)).backward()
            self._theta_step()
        loss, logits, labels = self.loss(model, x, y)
        weights.zero_grad(set_to_none=True)
        thetas.zero_grad(set_to_none=True)
        loss.backward()
        weights.step()
        if self.noise_on:
            self._theta_step()
        else:
            thetas.zero_grad(set_to_none=True)  # held at 0 in the warm-up: drop its gradient
        return self.metrics(loss, logits, labels)

    def _theta_step(self):
        self.optimizers["theta"].step()
        for module in self.injections():
            module.clamp_()

    def state_dict(self):
        return {**super().state_dict(), "noise_on": self.noise_on}

    def load_state_dict(self, state):
        self.check_state(state)
        self.noise_on = bool(state["noise_on"])
        super().load_state_dict(state)
