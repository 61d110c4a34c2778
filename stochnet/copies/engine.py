"""The copy engine: a model evaluated on many copies of its inputs, each copy with all of its noise anew.

EOT, smoothing, EPGD and the black-box populations all run a model on copies of inputs. Rows are
sample-major: row ``b * c + j`` is copy ``j`` of sample ``b``. Per-element noise makes the copies of
one batch independent by itself; per-pass noise (PNI weights) is drawn per copy in one pass by the
modules (see :mod:`stochnet.copies.coupling`), in groups of copies small enough for the extra
weights to fit :data:`NOISE_BUDGET_BYTES`; noise the probe finds but no module declares makes every
copy its own pass, with a warning. The engine also picks the rows of a pass: on CPU the largest
activation of a pass stays under :data:`CPU_ACTIVATION_BYTES` and all its outputs under
:data:`CPU_PASS_BYTES` (larger fresh allocations, or more freed memory than the C library keeps, are
new pages that page-fault on every pass); on GPU a pass takes what half the free memory holds, as
measured once, when the engine probes the model.
"""
import warnings

import torch

from .coupling import copies_per_pass
from .probe import probe

CPU_ACTIVATION_BYTES = 24 << 20
CPU_PASS_BYTES = 48 << 20
NOISE_BUDGET_BYTES = 256 << 20


def per_copy_mean(row_losses, copies):
    """(s * c,) losses of the rows -> (s,) mean over each sample's c copies."""
    return row_losses.view(-1, copies).mean(1)


def even_chunks(total, most):
    """``(first, end)`` bounds that split ``total`` items into the fewest chunks of at most ``most``,
    their sizes differing by one at most: no small tail pass, which costs more per row."""
    count = max(1, -(-total // max(1, most)))
    bounds = [total * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def repeat_rows(x, copies):
    """(s, ...) -> (s * c, ...): c exact copies of each sample, copies of a sample adjacent."""
    return x.unsqueeze(1).expand(x.shape[0], copies, *x.shape[1:]).reshape(-1, *x.shape[1:])


class CopyEngine:
    """Runs ``model`` on copies of inputs so that every copy sees an independent draw of every noise.

    Build one per attack or smoothing call, with the model already in the mode it is evaluated in;
    the model is probed once, on the first row it is given. ``max_rows`` overrides the rows per pass.
    """

    def __init__(self, model, max_rows=None):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise ValueError(f"max_rows must be an integer >= 1 or None, got {max_rows!r}")
        self.model = model
        self.max_rows = max_rows
        self.probed = None  # the probe's result; rows_per_pass and copies_per_group are set with it

    def _probe(self, rows):
        """Probe the model on ``rows[:1]`` once, and size the passes from what the probe measured."""
        if self.probed is None:
            self.probed = probe(self.model, rows[:1])
            if self.probed.undeclared_per_pass:
                warnings.warn(f"noise drawn once per forward pass that no module declares (see "
                              f"stochnet.copies.coupling) in {', '.join(self.probed.undeclared_per_pass)}: copies of "
                              "an input in one batch would share it, so every copy runs in a pass of its own",
                              RuntimeWarning, stacklevel=3)
            self.rows_per_pass = self.max_rows or self._rows_per_pass(rows)
            self.copies_per_group = self._copies_per_group()
        return self.probed

    def _rows_per_pass(self, rows):
        """The most rows one pass may hold. On CPU both the largest activation of a pass and all it
        allocates stay small: a pass that frees more than the C library keeps (its trim threshold) gets
        fresh pages, which page-fault, on every pass."""
        result = self.probed
        if rows.is_cuda:
            free, _ = torch.cuda.mem_get_info(rows.device)
            return max(1, free // 2 // max(1, 2 * result.saved_bytes_per_row))
        return max(1, min(CPU_ACTIVATION_BYTES // max(1, result.activation_bytes_per_row),
                          CPU_PASS_BYTES // max(1, result.saved_bytes_per_row)))

    def _copies_per_group(self):
        """How many copies of a sample one pass may hold (None: no limit)."""
        if self.probed.undeclared_per_pass:
            return 1
        per_copy = sum(m.noise_bytes_per_copy() for m in self.probed.per_pass_modules)
        return max(1, NOISE_BUDGET_BYTES // per_copy) if per_copy else None

    def is_stochastic(self, rows):
        """Whether the model's outputs vary from pass to pass (probed on ``rows[:1]`` the first time)."""
        return self._probe(rows).stochastic

    def logits(self, rows, copies):
        """The model's outputs (R, K) on ``rows`` (R = s * copies, sample-major); differentiable when
        grad is enabled. Each copy of a sample draws the model's noise independently."""
        if rows.shape[0] % copies:
            raise ValueError(f"rows must hold whole samples of {copies} copies each, got {rows.shape[0]} rows")
        self._probe(rows)
        samples = rows.shape[0] // copies
        group = min(self.copies_per_group or copies, copies, self.rows_per_pass)
        bounds = even_chunks(samples, self.rows_per_pass // group)
        if group == copies and len(bounds) == 1:
            return self._pass(rows, copies)
        grid = rows.view(samples, copies, *rows.shape[1:])
        chunks = []
        for first, end in bounds:
            chunk = grid[first:end]
            parts = [self._pass(chunk[:, j:j + group].flatten(0, 1), min(group, copies - j)) for j in range(0, copies, group)]
            chunks.append(torch.cat([part.view(chunk.shape[0], -1, *part.shape[1:]) for part in parts], 1))
        out = torch.cat(chunks)
        return out.view(rows.shape[0], *out.shape[2:])

    def _pass(self, rows, copies):
        with copies_per_pass(copies):
            out = self.model(rows)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != rows.shape[0]:
            raise ValueError(f"model must return (rows, classes) logits; for {rows.shape[0]} rows it returned "
                             f"{tuple(getattr(out, 'shape', ())) or type(out).__name__}")
        return out

    def input_grad(self, x, labels, copies, loss_fn, make_rows=None):
        """Gradient of the summed per-sample loss over ``copies`` noisy passes, w.r.t. ``x``.

        ``make_rows(x_chunk, c)`` makes the rows of a chunk (default: ``c`` exact copies, see
        :func:`repeat_rows`); ``loss_fn(logits (s*c, K), labels (s,), c)`` gives the per-sample
        loss (s,) to ascend. On a deterministic model exact copies are all the same, so ``c`` is 1
        there. Chunks of samples are differentiated one after the other, so memory stays bounded.

        Returns ``(grad (B, ...), loss (B,), logits (B, c, K))``, all detached.
        """
        self._probe(x)
        c = 1 if make_rows is None and not self.probed.stochastic else copies
        make_rows = make_rows or repeat_rows
        grads, losses, logits = [], [], []
        for first, end in even_chunks(x.shape[0], self.rows_per_pass // c):
            xs = x[first:end].detach().requires_grad_(True)
            out = self.logits(make_rows(xs, c), c)
            loss = loss_fn(out, labels[first:end], c)
            (grad,) = torch.autograd.grad(loss.sum(), xs)
            grads.append(grad)
            losses.append(loss.detach())
            logits.append(out.detach().view(xs.shape[0], c, -1))
        if len(grads) == 1:
            return grads[0], losses[0], logits[0]
        return torch.cat(grads), torch.cat(losses), torch.cat(logits)
