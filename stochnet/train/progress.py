"""Per-epoch progress: a tqdm bar on a terminal, plain log lines otherwise (logs, CI, pipes)."""
import sys
import time


class EpochProgress:
    """Running loss, accuracy and images/s of one epoch.

    On a terminal the numbers show in a tqdm bar; otherwise a line is printed about every
    ``log_every`` fraction of the epoch and at its end. ``enabled=False`` (ranks other than 0)
    counts silently.
    """

    def __init__(self, epoch, epochs, steps, stream=None, enabled=True, log_every=0.25):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.loss_sum = 0.0
        self.correct = 0
        self.count = 0
        self.step = 0
        self.start = time.perf_counter()
        self.log_steps = max(1, round(steps * log_every))
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=self._label(), file=self.stream, leave=True, dynamic_ncols=True)

    def _label(self):
        return f"epoch {self.epoch + 1}/{self.epochs}"

    def update(self, loss, correct, count):
        """Account one step: its mean loss over ``count`` samples, of which ``correct`` were right."""
        self.step += 1
        self.loss_sum += float(loss) * int(count)
        self.correct += int(correct)
        self.count += int(count)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self._numbers(), refresh=False)
            self.bar.update(1)
        elif self.step % self.log_steps == 0 or self.step == self.steps:
            print(f"{self._label()} step {self.step}/{self.steps} {self._numbers()}", file=self.stream, flush=True)

    def summary(self):
        seconds = time.perf_counter() - self.start
        return {"loss": self.loss_sum / max(self.count, 1), "accuracy": self.correct / max(self.count, 1),
                "images": self.count, "seconds": seconds, "images_per_s": self.count / max(seconds, 1e-9)}

    def _numbers(self):
        numbers = self.summary()
        return (f"loss {numbers['loss']:.4f} acc {100 * numbers['accuracy']:.2f}% "
                f"{numbers['images_per_s']:.1f} img/s")

    def close(self):
        """End the epoch's display; returns :meth:`summary`."""
        if self.bar is not None:
            self.bar.close()
        return self.summary()


def is_terminal(stream):
    """Whether ``stream`` is a terminal (has an ``isatty`` that says so)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
