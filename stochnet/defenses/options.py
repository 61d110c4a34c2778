"""Option dataclasses of the training methods and the parsing of a flat config dict into them.

Every field of an Options dataclass has a default and ``metadata={"help": ...}`` (plus
``"choices"`` for strings), so a command line can turn each field into ``--option-name``.
The optimisation options and the adversarial-example options are shared dataclasses that
the methods' Options inherit, with each method overriding the defaults its source publishes.
"""
import dataclasses
import typing

ATTACKS = ("fgsm", "pgd-linf", "pgd-l2", "mixed")
ATTACK_TARGETS = ("label", "prediction")


def option(default, help, choices=None):
    """A dataclass field with its default, its help text and (for strings) its valid values."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def with_default(options_class, name, default):
    """``options_class``'s field ``name`` (help and choices kept) with another default, for a
    method whose source publishes a different value."""
    return dataclasses.field(default=default, metadata=options_class.__dataclass_fields__[name].metadata)


def require(condition, name, requirement, value):
    if not condition:
        raise ValueError(f"option {name} must be {requirement}, got {value!r}")


@dataclasses.dataclass
class OptimizerOptions:
    """The optimisation options every method shares.

    They do not depend on the batch: the batch size is the data loader's, and the learning
    rate is used as given (not scaled by the batch size).
    """

    optimizer: str = option("sgd", "optimizer of the network weights", choices=("sgd", "adam"))
    lr: float = option(0.1, "initial learning rate")
    momentum: float = option(0.9, "SGD momentum (ignored by adam)")
    nesterov: bool = option(False, "use Nesterov momentum (SGD only)")
    weight_decay: float = option(1e-4, "L2 weight decay of the network weights")
    lr_milestones: tuple = option((0.5, 0.75), "epochs at which the learning rate is multiplied by "
                                  "lr_gamma: values below 1 are fractions of the run's epochs, values "
                                  ">= 1 whole epoch numbers")
    lr_gamma: float = option(0.1, "factor applied to the learning rate at each milestone")

    def __post_init__(self):
        require(self.optimizer in ("sgd", "adam"), "optimizer", "'sgd' or 'adam'", self.optimizer)
        require(self.lr > 0, "lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(not (self.nesterov and self.optimizer == "sgd" and self.momentum == 0), "nesterov",
                "False when momentum is 0 (Nesterov needs momentum)", self.nesterov)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(all(m > 0 and (m < 1 or float(m).is_integer()) for m in self.lr_milestones), "lr_milestones",
                "fractions in (0, 1) or whole epoch numbers >= 1", self.lr_milestones)
        require(0 < self.lr_gamma <= 1, "lr_gamma", "in (0, 1]", self.lr_gamma)


@dataclasses.dataclass
class AdversarialOptions(OptimizerOptions):
    """How the adversarial training examples are made and weighted.

    ``mixed`` attacks the first ceil(B/2) samples of each batch with L-inf PGD (eps, step_size)
    and the others with L2 PGD (eps_l2, step_size_l2), so every batch trains on both norms.
    """

    attack: str = option("pgd-linf", "attack that makes the training examples", choices=ATTACKS)
    eps: float = option(8 / 255, "L-inf budget (fgsm, pgd-linf, mixed)")
    step_size: float = option(2 / 255, "L-inf PGD step size")
    eps_l2: float = option(0.5, "L2 budget (pgd-l2, mixed)")
    step_size_l2: float = option(0.1, "L2 PGD step size")
    steps: int = option(7, "PGD steps")
    random_start: bool = option(True, "start PGD at a uniform random point of the ball")
    attack_target: str = option("label", "labels the attack moves away from: the true labels, or the "
                                "model's predictions on the clean batch (PNI's and Learn2Perturb's code)",
                                choices=ATTACK_TARGETS)
    clean_weight: float = option(0.0, "loss = clean_weight * CE(clean) + (1 - clean_weight) * CE(adversarial)")
    adv_start: int = option(0, "first epoch (0-based) with adversarial training; before it the loss is "
                            "the clean CE")

    def __post_init__(self):
        super().__post_init__()
        require(self.attack in ATTACKS, "attack", f"one of {ATTACKS}", self.attack)
        require(self.attack_target in ATTACK_TARGETS, "attack_target", f"one of {ATTACK_TARGETS}",
                self.attack_target)
        for name in ("eps", "eps_l2"):
            require(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        require(self.eps <= 1, "eps", "<= 1 (inputs are in [0, 1])", self.eps)
        for name in ("step_size", "step_size_l2"):
            require(getattr(self, name) > 0, name, "> 0", getattr(self, name))
        require(self.steps >= 1, "steps", ">= 1", self.steps)
        require(0 <= self.clean_weight <= 1, "clean_weight", "in [0, 1]", self.clean_weight)
        require(self.adv_start >= 0, "adv_start", ">= 0", self.adv_start)


def parse_options(options_class, config):
    """An ``options_class`` instance from a flat ``{option-name: value}`` dict.

    Names may use dashes or underscores. A key whose value is None is left at its default,
    so a command line can pass every option it knows with None for those not given. Values
    are converted to the field's type: numbers from numbers or numeric strings, booleans
    from bools or "true"/"false"/"1"/"0", tuples from sequences or comma-separated strings.
    Unknown names raise ValueError naming them and listing the valid ones.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of option name -> value, got {type(config).__name__}")
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    hints = typing.get_type_hints(options_class)
    values, unknown = {}, []
    for key, value in config.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            unknown.append(key)
        elif value is not None:
            values[name] = _convert(name, value, hints[name])
    if unknown:
        valid = ", ".join(name.replace("_", "-") for name in fields)
        raise ValueError(f"unknown option(s) {sorted(map(str, unknown))} for {options_class.__name__}; "
                         f"valid options: {valid}")
    for name, value in values.items():
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"option {name} must be one of {choices}, got {value!r}")
    return options_class(**values)


def _convert(name, value, kind):
    converters = {bool: _to_bool, int: _to_int, float: _to_float, tuple: _to_tuple, str: _to_str}
    try:
        return converters[kind](value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name} must be of type {kind.__name__}, got {value!r}") from None


def _to_int(value):
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not float(number).is_integer():
        raise ValueError
    return int(number)


def _to_float(value):
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _to_tuple(value):
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(_to_float(item) for item in items if str(item).strip())


def _to_str(value):
    if not isinstance(value, str):
        raise ValueError
    return value


def _to_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError
