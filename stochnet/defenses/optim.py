"""Optimizers and the per-epoch step learning-rate schedule shared by the methods."""
import torch


def make_optimizer(param_groups, options, weight_decay=None):
    """SGD or Adam (``options.optimizer``) over ``param_groups`` with the shared options.

    ``weight_decay`` overrides ``options.weight_decay`` (groups may set their own, too).
    """
    decay = options.weight_decay if weight_decay is None else weight_decay
    if options.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=options.lr, momentum=options.momentum,
                               nesterov=options.nesterov, weight_decay=decay)
    return torch.optim.Adam(param_groups, lr=options.lr, weight_decay=decay)


def milestone_epochs(milestones, epochs):
    """The 0-based epochs at which the lr drops: a fraction ``m < 1`` becomes ``round(m * epochs)``,
    at least 1 (a drop at epoch 0 would only be a lower initial lr)."""
    return sorted(max(1, round(m * epochs)) if m < 1 else int(m) for m in milestones)


def lr_at(epoch, base_lr, milestones, gamma):
    """``base_lr * gamma ** (number of milestones <= epoch)``: a pure function of the epoch, so
    setting it again after a resume changes nothing."""
    return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
