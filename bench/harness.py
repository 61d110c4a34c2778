"""Generic benchmark machinery shared by the op benchmarks.

An op benchmark builds :class:`Contender` s (one iteration of work each; :func:`op_functions`
and :func:`op_contender` for a fused op against eager and compiled PyTorch) and calls
:func:`compare` (through :func:`bench.cases.time_case`), which times them round-robin next to a
``dst.copy_(src)`` of the same size (the machine's copy bandwidth, measured under the same
conditions), and returns rows with medians, quartiles, ratios against the reference
contenders, and achieved bandwidth.
:func:`report` assembles a report of such cases, :func:`format_report` prints it,
:func:`stochnet.output.write_json` stores it.
"""
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

REFERENCES = ("eager", "compiled")
_COPY = "copy"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: one sample per repeat, each the mean of ``inner`` back-to-back calls."""

    samples: tuple
    inner: int

    @property
    def median(self):
        return statistics.median(self.samples)

    def quartiles(self):
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def to_dict(self):
        q1, q3 = self.quartiles()
        return {"median_s": self.median, "min_s": min(self.samples), "q1_s": q1, "q3_s": q3,
                "iqr_s": q3 - q1, "repeats": len(self.samples), "inner": self.inner}


def _sample(fn, device, inner):
    synchronize(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / inner


def measure(fns, device, repeats, warmup, min_sample_s=0.0):
    """Time each callable of ``fns`` (name -> fn) and return name -> :class:`Timing`.

    Every callable gets ``warmup`` untimed calls; then ``inner`` is set so that one sample
    lasts at least ``min_sample_s`` (keeps timer and launch overhead small on tiny inputs).
    The samples are taken round-robin, so drift and other load on the machine hit every
    contender alike. The garbage collector is paused while timing.
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        once = max(_sample(fn, device, 1), 1e-9)
        inner[name] = max(1, math.ceil(min_sample_s / once))
    samples = {name: [] for name in fns}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                samples[name].append(_sample(fn, device, inner[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(tuple(values), inner[name]) for name, values in samples.items()}


def copy_callable(numel, dtype, device):
    """``dst.copy_(src)`` of two ``numel``-element tensors whose memory is already touched,
    and the bytes one call moves (read src + write dst)."""
    src = torch.ones(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return (lambda: dst.copy_(src)), 2 * numel * src.element_size()


def saved_tensor_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    A saved view counts its whole storage: that is what the graph keeps alive.
    """
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = fn()
    total = sum(storages.values())
    del output
    return total


def peak_memory_bytes(fn, device):
    """Peak bytes allocated above the starting level while ``fn()`` runs; None off CUDA,
    where the allocator keeps no such statistic."""
    if device.type != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _resident_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def peak_resident_bytes(fn):
    """CPU: the peak resident memory above the starting level while ``fn()`` runs (Linux: the
    high-water mark VmHWM, reset through /proc/self/clear_refs), with the fused ops' output pool
    emptied first so that its buffers count as the fresh allocations they stand for; None where
    the kernel does not offer the reset."""
    torch.ops.stochnet.release_cpu_output_pool()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        start = _resident_bytes("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _resident_bytes("VmHWM") - start)


def peak_bytes(fn, device):
    """Peak memory above the starting level while ``fn()`` runs: the allocator's peak on CUDA
    (:func:`peak_memory_bytes`), the resident high-water mark on CPU (:func:`peak_resident_bytes`)
    of a second call: the first call of a code path pages in library code, resident too (160 MB
    for the first fused perturb call, against the 33.5 MB of its output)."""
    if device.type == "cuda":
        return peak_memory_bytes(fn, device)
    fn()
    return peak_resident_bytes(fn)


def peak_note(device, during):
    """The note saying what :func:`peak_bytes` measured on ``device`` during ``during`` (e.g. 'one iteration')."""
    if device.type == "cuda":
        return f"peak: CUDA max_memory_allocated above the starting level during {during}"
    return (f"peak: resident memory high-water mark above the starting level during {during} (VmHWM), "
            "after an untimed call (a first call pages in library code) and with the fused ops' output "
            "pool emptied")


def compile_warmup(step):
    """Run a torch.compile'd step until it is compiled; the seconds the first call took."""
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    step()
    return seconds


@dataclass
class Contender:
    """One way of doing a case's work: ``fn()`` is one iteration.

    ``kind`` is 'fused', 'eager' or 'compiled'; ``extra`` fields are copied into its row
    (backend, compile_s, saved_bytes, peak_bytes, ...).
    """

    name: str
    kind: str
    fn: Callable[[], object]
    extra: dict = field(default_factory=dict)


def op_functions(fused, eager):
    """The contending functions of a fused-op benchmark, name -> (kind, backend, fn): ``fused[b]``
    for each backend b -> fn of ``fused``, then ``eager`` and ``eager`` under torch.compile."""
    functions = {f"fused[{backend}]": ("fused", backend, fn) for backend, fn in fused.items()}
    functions["eager"] = ("eager", None, eager)
    # dynamic=False: each shape gets its own static-shape kernel, as a user's model would
    functions["compiled"] = ("compiled", None, torch.compile(eager, dynamic=False))
    return functions


def op_contender(name, kind, backend, step, device, *, saved=None, peak=True):
    """A :class:`Contender` of :func:`op_functions` running ``step``, with its row's extras: the
    backend, a compiled step's compilation seconds (it is compiled here), the bytes autograd saves
    while ``saved()`` runs (when given) and the peak memory of one step (when ``peak``)."""
    extra = {"backend": backend} if backend else {}
    if kind == "compiled":
        extra["compile_s"] = compile_warmup(step)
    if saved is not None:
        extra["saved_bytes"] = saved_tensor_bytes(saved)
    if peak:
        measured = peak_bytes(step, device)
        if measured is not None:
            extra["peak_bytes"] = measured
    return Contender(name, kind, step, extra)


def compare(contenders, device, *, nbytes, copy_numel, copy_dtype, repeats, warmup,
            min_sample_s=0.0, references=REFERENCES):
    """Time ``contenders`` and a same-size copy round-robin; one result row per contender.

    ``nbytes`` is the traffic the work needs at least (the fused op's reads and writes);
    every row's ``gbps`` divides it by that row's median, and ``fraction_of_copy`` relates
    it to the copy bandwidth of this run. ``<ref>_over_this`` is the median of the reference
    contender named ``ref`` over this row's median (above 1: this row is faster).
    """
    names = [c.name for c in contenders]
    if _COPY in names or len(set(names)) != len(names):
        raise ValueError(f"contender names must be distinct and not {_COPY!r}, got {names}")
    copy_fn, copy_bytes = copy_callable(copy_numel, copy_dtype, device)
    fns = {c.name: c.fn for c in contenders}
    fns[_COPY] = copy_fn
    timings = measure(fns, device, repeats, warmup, min_sample_s)
    copy_timing = timings.pop(_COPY)
    copy_gbps = copy_bytes / copy_timing.median / 1e9
    rows = []
    for contender in contenders:
        timing = timings[contender.name]
        gbps = nbytes / timing.median / 1e9
        rows.append({"name": contender.name, "kind": contender.kind, **timing.to_dict(),
                     "gbps": gbps, "fraction_of_copy": gbps / copy_gbps, **contender.extra})
    medians = {row["name"]: row["median_s"] for row in rows}
    for row in rows:
        for ref in references:
            if ref in medians:
                row[f"{ref}_over_this"] = medians[ref] / row["median_s"]
    return {"bytes_moved": nbytes,
            "copy": {"bytes": copy_bytes, "gbps": copy_gbps, **copy_timing.to_dict()},
            "results": rows}


def per_image(result, images):
    """A :func:`compare` result of whole attacks or training steps, where bytes per second say
    nothing: each row's GB/s and % copy replaced by images/s (``images`` per call)."""
    for row in result["results"]:
        row.pop("gbps")
        row.pop("fraction_of_copy")
        row["images_per_s"] = images / row["median_s"]
    return result


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def op_notes(traffic, copied="a same-size tensor"):
    """The first notes of a fused-op benchmark: how times and ratios are taken, ``traffic`` (what
    its GB/s counts) and what % copy compares with (a copy of ``copied``)."""
    return ["times: median over round-robin samples after warm-up; min and IQR beside it; "
            "torch.compile's compilation is excluded from timing and shown as compile s",
            "eager/this and compiled/this: that contender's median over this row's (above 1: this row is faster)",
            traffic,
            f"% copy: GB/s over dst.copy_(src) of {copied} into already-touched memory "
            "(read+write bytes), timed in the same round-robin"]


def fresh_outputs_note(outputs):
    """The CPU note of a training-op benchmark whose contenders allocate ``outputs`` per call."""
    return ("CPU: a fresh allocation of 32 MB or more page-faults on first touch (DESIGN.md); "
            f"every contender allocates its outputs ({outputs}) per call, as training does; dy is allocated "
            "once outside the timed region; absolute CPU times are indicative, compare ratios")


# the note of benchmarks whose rows are images/s, not bytes/s
SCALE_ONLY_NOTE = "the fused-op bytes and copy columns are the input batch and its copy, for scale only"


def report(op, environment, repeats, warmup, quick, cases, notes, skipped=(), **params):
    """The report :func:`format_report` prints and :func:`write_json` stores; ``params`` are the
    op's settings (eps, gamma, ...); ``environment`` is taken before the run (its load average)."""
    return {"op": op, "environment": environment, "repeats": repeats, "warmup": warmup, "quick": quick,
            **params, "skipped": list(skipped), "notes": notes, "cases": cases}


# PyTorch's switch to back large CPU allocations with transparent huge pages: a fresh 33.5 MB
# output then takes ~17 page faults instead of ~8200. Read once, at the first allocation.
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    """What the numbers were measured on."""
    info = {"device": device.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = _cpu_name()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["cpu_count"] = os.cpu_count()
        info["huge_page_allocations"] = os.environ.get(THP_VARIABLE) == "1"
        if hasattr(os, "getloadavg"):
            info["load_average"] = os.getloadavg()[0]
    return info


def _ms(value):
    return f"{value * 1e3:.3f}"


def _size(nbytes):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


_COLUMNS = (
    ("contender", "name", str),
    ("median ms", "median_s", _ms),
    ("min ms", "min_s", _ms),
    ("IQR ms", "iqr_s", _ms),
    ("eager/this", "eager_over_this", lambda v: f"{v:.2f}x"),
    ("compiled/this", "compiled_over_this", lambda v: f"{v:.2f}x"),
    ("GB/s", "gbps", lambda v: f"{v:.2f}"),
    ("% copy", "fraction_of_copy", lambda v: f"{100 * v:.1f}%"),
    ("saved", "saved_bytes", _size),
    ("peak", "peak_bytes", _size),
    ("compile s", "compile_s", lambda v: f"{v:.1f}"),
)


def format_table(rows, columns=_COLUMNS):
    """Rows (dicts) as an aligned text table (:func:`stochnet.output.format_table`, without a rule);
    ``columns`` are (header, key, format); a column shows only when some row has its key, and a row
    without the key (or with None) shows '-'."""
    from stochnet import output  # imported on use: stochnet loads its extension

    shown = [col for col in columns if any(row.get(col[1]) is not None for row in rows)]
    return output.format_table(rows, [(header, _cell(key, fmt)) for header, key, fmt in shown], rule=False)


def _cell(key, fmt):
    return lambda row: fmt(row[key]) if row.get(key) is not None else "-"


def format_report(report):
    """The whole report as text: environment, one table per case, skipped contenders, notes."""
    env = report["environment"]
    lines = [f"op {report['op']} | device {env['device']} ({env['name']}) | threads {env['threads']} | "
             f"torch {env['torch']} | repeats {report['repeats']} after {report['warmup']} warm-up"]
    if "huge_page_allocations" in env:
        lines.append(f"CPU allocations: {'transparent huge pages (' + THP_VARIABLE + '=1)' if env['huge_page_allocations'] else 'glibc default (4 KiB pages)'}")
    if "load_average" in env:
        busy = env["load_average"] >= 0.5
        lines.append(f"load average (1 min) at the start: {env['load_average']:.2f} on {env['cpu_count']} CPUs"
                     + (" - other processes are running: timings are noisy, OpenMP-parallel code suffers most"
                        if busy else ""))
    for case in report["cases"]:
        copy = case["copy"]
        lines += ["", f"== {case['title']} | fused-op bytes {_size(case['bytes_moved'])} | "
                      f"copy {copy['gbps']:.2f} GB/s ({_ms(copy['median_s'])} ms for {_size(copy['bytes'])})",
                  format_table(case["results"])]
    for skipped in report.get("skipped", ()):
        lines.append(f"skipped {skipped['name']}: {skipped['reason']}")
    if report.get("notes"):
        lines += [""] + [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)
