"""The difference-of-logits-ratio (DLR) losses of APGD (Croce & Hein 2020), per row of logits.

Both are margins divided by a spread of the top logits, so they do not change when the logits are
shifted or scaled: a model cannot hide from them by saturating its softmax, as it can from the
cross-entropy. ``z_pi1 >= z_pi2 >= ...`` are the sorted logits of a row.
"""
DLR_EPS = 1e-12


def dlr_loss(logits, labels):
    """``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` per row: (R, K >= 3), (R,) -> (R,)."""
    top = logits.topk(3, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return -(z_y - other) / (top[:, 0] - top[:, 2] + DLR_EPS)


def targeted_dlr_loss(logits, labels, targets):
    """``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` per row: (R, K >= 4), (R,), (R,) -> (R,)."""
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + DLR_EPS)


__all__ = ["dlr_loss", "targeted_dlr_loss"]
