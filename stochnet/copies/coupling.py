"""How a module's noise couples the rows of a batch, and how many copies a pass holds.

Every noise module of stochnet declares ``noise_coupling``:

- :data:`PER_ELEMENT`: every element of every row draws its own noise (StocReLU-EMA, the
  perturbation and Gaussian noise modules). Copies of an input in one batch are independent.
- :data:`PER_PASS`: one draw per forward pass is shared by every row (PNI weight noise). Such a
  module must also honour :func:`copies_in_pass`: when the engine runs a pass of ``g`` copies
  per sample (rows sample-major, row ``b * g + j`` is copy ``j`` of sample ``b``), it draws ``g``
  independent noises and row ``r`` uses draw ``r % g``. Its ``noise_bytes_per_copy()`` tells the
  engine what one extra draw costs in memory.

A module without the attribute is either deterministic or draws noise stochnet does not know
about; :mod:`stochnet.copies.probe` finds out which.
"""
import contextlib
import contextvars

PER_ELEMENT = "element"
PER_PASS = "pass"
COUPLINGS = (PER_ELEMENT, PER_PASS)

_COPIES = contextvars.ContextVar("stochnet_copies_in_pass", default=1)


def copies_in_pass():
    """How many independent per-pass draws the current forward pass needs (1 outside the engine)."""
    return _COPIES.get()


@contextlib.contextmanager
def copies_per_pass(copies):
    """Inside, per-pass noise modules draw ``copies`` noises and row ``r`` uses draw ``r % copies``."""
    token = _COPIES.set(int(copies))
    try:
        yield
    finally:
        _COPIES.reset(token)


def noise_coupling(module):
    """The coupling a module declares (None when it declares none)."""
    coupling = getattr(module, "noise_coupling", None)
    if coupling is not None and coupling not in COUPLINGS:
        raise ValueError(f"{type(module).__name__}.noise_coupling must be one of {COUPLINGS}, got {coupling!r}")
    return coupling


def check_rows(rows, copies, name):
    """A per-pass noise module's check that a batch splits into whole groups of copies."""
    if rows % copies:
        raise ValueError(f"{name}: a pass of {copies} copies per sample needs a multiple of {copies} rows, got {rows}")
