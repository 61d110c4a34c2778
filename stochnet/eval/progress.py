"""Progress of one (checkpoint, attack) evaluation: a tqdm bar on a terminal, plain log lines otherwise.

The same approach as training's :class:`stochnet.train.progress.EpochProgress` (whose terminal test it
reuses), counting images attacked instead of steps and adding an ETA. Note: if a third user appears,
fold both into one shared class.
"""
import sys
import time

from ..train.progress import is_terminal


class AttackProgress:
    """Images attacked out of ``total`` (over every repeat), with images/s and ETA.

    Call it with the number of images of each batch (it is :func:`stochnet.eval.robust.robust_counts`'s
    ``progress`` callback). On a terminal the numbers show in a tqdm bar on ``stream`` (stderr by
    default); otherwise a line is printed about every ``log_every`` fraction and at the end.
    ``enabled=False`` (ranks other than 0) counts silently.
    """

    def __init__(self, label, total, stream=None, enabled=True, log_every=0.25):
        self.label, self.total = label, max(int(total), 0)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.count = 0
        self.start = time.perf_counter()
        self.log_images = max(1, round(self.total * log_every))
        self.next_log = self.log_images
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=label, unit="img", file=self.stream, leave=True,
                            dynamic_ncols=True)

    def __call__(self, images):
        images = int(images)
        self.count += images
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(images)
        elif self.count >= self.next_log or self.count >= self.total:
            while self.next_log <= self.count:
                self.next_log += self.log_images
            print(f"{self.label}: {self._numbers()}", file=self.stream, flush=True)

    def _numbers(self):
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rate = self.count / seconds
        left = max(self.total - self.count, 0)
        eta = _clock(left / rate) if rate > 0 else "?"
        share = 100 * self.count / self.total if self.total else 100.0
        return f"{self.count}/{self.total} images ({share:.0f}%) {rate:.1f} img/s ETA {eta}"

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
