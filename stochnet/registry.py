"""``Registry``: things by name (training methods, models, attacks), one shape for every package.

Each package keeps its own registry (``stochnet.defenses.METHODS``, ``stochnet.models.MODELS``,
``stochnet.attacks.registry.ATTACKS``); a registry is a read-only mapping name -> entry in the order
of registration, and an unknown name raises :class:`UnknownNameError` listing the known ones.
"""
from collections.abc import Mapping

_MISSING = object()


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has. A KeyError (what a mapping raises) and a ValueError (what the
    builders by name have always raised); the message lists the known names."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Registry(Mapping):
    """Entries by name: ``registry.register(name, entry)`` or ``@registry.register(name)`` adds one,
    ``registry.get(name)`` (or ``registry[name]``) returns it, ``registry.names()`` lists them.

    ``kind`` names what the registry holds ("model", "attack", ...) in its error messages::

        MODELS = Registry("model")

        @MODELS.register("mnist_cnn")
        def mnist_cnn(...): ...

        MODELS.get("resnet1000")  # UnknownNameError: unknown model 'resnet1000'; choose one of mnist_cnn
    """

    def __init__(self, kind, entries=None):
        self.kind = kind
        self._entries = {}
        for name, entry in dict(entries or {}).items():
            self.register(name, entry)

    def register(self, name, entry=_MISSING):
        """Add ``entry`` under ``name`` and return it; without ``entry``, a decorator that adds what it
        decorates. A name can be registered once."""
        if entry is _MISSING:
            return lambda decorated: self.register(name, decorated)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def names(self):
        """The names, in the order they were registered."""
        return tuple(self._entries)

    def get(self, name, default=_MISSING):
        """The entry of ``name``; an unknown name returns ``default`` when one is given, else raises
        :class:`UnknownNameError` naming the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            if default is not _MISSING:
                return default
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}") from None

    def __getitem__(self, name):
        return self.get(name)

    def __contains__(self, name):
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return f"Registry({self.kind!r}, names={self.names()})"
