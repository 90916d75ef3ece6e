"""What the training-step benchmarks share: the timing and memory processes, the optimizers, the table.

A workload (`encoder_train_step.py`, `decoder_train_step.py`) says what one
step trains: a random batch, and how each side builds its model, optimizer
and loss. Everything else is here, the same for every workload, so the two
scripts' figures are measured alike.

- Time: one process per configuration builds both sides and alternates their
  steps (nlpkit, transformers, then transformers, nlpkit, ...), so that both
  see the same machine load; `--repeats` runs more such processes. Per side
  the table gives the median wall time over all measured steps (warm-up steps
  excluded), the ratio of the two medians, the median of the per-step ratios
  of back-to-back pairs, and the ratio of the median CPU times
  (`time.process_time`).
- Which figure to trust: on a shared machine, other processes steal cores and
  torch's threads then wait for each other at every parallel region, so wall
  times with several threads can swing tenfold. With `--threads 1` a busy
  neighbour only time-shares the core and the CPU-time ratio stays stable
  within a percent or two; use it to compare code, and wall time with all
  threads on a quiet machine.
- Memory: each side then runs `--warmup + 1` steps alone in its own child
  process, whose `resource.getrusage(RUSAGE_SELF).ru_maxrss` is its peak
  resident memory. Both children import the same modules (torch,
  transformers, nlpkit, the plugin, Lightning) before building anything, so
  the import baseline is the same; the detailed lines also give the growth
  over the post-import RSS (weights, gradients, AdamW state, activations).
  Peak RSS is what the OS had to provide, the limit that matters on a CPU
  machine, and torch's CPU allocator keeps no cache of its own, so it follows
  the tensors; `tracemalloc` does not see torch's allocations at all.
- Optimizers: nlpkit's is what `TaskModule.configure_optimizers` builds
  (fused AdamW, foreach under fp16's gradient scaler, no weight decay on
  vectors); transformers' is what its `Trainer` picks by default
  (`Trainer.get_optimizer_cls_and_kwargs` on the default `TrainingArguments`
  values: `adamw_torch_fused`, so `fused=True` in both precisions), or, with
  `--hf-optimizer torch-default`, torch's own choice (a per-tensor loop for
  CPU tensors). Both share lr, betas, eps and the weight-decay split (0.01 on
  matrices, 0 on vectors).
- Precisions: `fp32`, and `bf16` = `torch.autocast(device, dtype=torch.bfloat16)`
  around forward and loss with fp32 master weights, backward and the
  optimizer outside autocast. Gradient clipping and the LR scheduler are left
  out on both sides.
- Device: the CPU by default; `--device cuda` runs both sides on the GPU
  (each step ends with `float(loss)`, which waits for the GPU, so the wall
  time of a step is its GPU time). Peak RSS says nothing about GPU memory, so
  the memory processes run only on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import types
from typing import Any, Callable

from _children import peak_rss_mib, rss_mib, run_child

SIDES = ("nlpkit", "transformers")
# Shared optimizer settings: transformers' default learning rate (nlpkit's 5e-4 suits small
# models trained from scratch and throws BERT-base's loss around within a few steps), and
# nlpkit's OptimizationSection defaults for the rest.
LR, BETAS, EPS, WEIGHT_DECAY = 5e-5, (0.9, 0.999), 1e-8, 0.01

# build(size, precision, device, compiled) -> (model, optimizer, loss_fn(batch) -> loss, optimizer description)
NlpkitBuilder = Callable[[str, str, str, bool], tuple[Any, Any, Callable[[dict[str, Any]], Any], str]]
# build(size, precision, hf_optimizer, device) -> the same
TransformersBuilder = Callable[[str, str, str, str], tuple[Any, Any, Callable[[dict[str, Any]], Any], str]]


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one training step trains, for each side."""

    script: str  # the script that defines it: its children run it again
    description: str  # the first line of --help
    sizes: dict[str, str]  # size name -> what it is, for --help; the first is the default
    batch_size: int
    length: int
    make_batch: Callable[[Any, int, str], dict[str, Any]]  # (torch, batch_size, device) -> the batch both sides train on
    build_nlpkit: NlpkitBuilder
    build_transformers: TransformersBuilder
    import_plugin: Callable[[], None]  # imports the nlpkit plugin the workload uses (the same on both sides)


def task_module_optimizer(task: Any, model: Any, precision: str) -> tuple[Any, str]:
    """The optimizer `TaskModule.configure_optimizers` builds for `model`, and its description."""
    from nlpkit.recipe import OptimizationSection
    from nlpkit.training.module import TaskModule

    optimization = OptimizationSection(lr=LR, weight_decay=WEIGHT_DECAY, betas=list(BETAS), eps=EPS)
    module = TaskModule(task, model, optimization)
    # configure_optimizers reads only these two trainer attributes.
    module._trainer = types.SimpleNamespace(
        precision="32-true" if precision == "fp32" else "bf16-mixed", estimated_stepping_batches=1000
    )
    optimizer = module.configure_optimizers()["optimizer"]
    return optimizer, describe(optimizer)


def trainer_optimizer(model: Any, hf_optimizer: str) -> tuple[Any, str]:
    """The optimizer transformers' Trainer would build for `model` (or torch's default AdamW), and its description."""
    import torch
    import transformers

    if hf_optimizer == "trainer":
        # The Trainer's own choice from the default TrainingArguments values (building
        # TrainingArguments itself needs `accelerate`, which is not required here).
        defaults = {f.name: f.default for f in dataclasses.fields(transformers.TrainingArguments)}
        args = types.SimpleNamespace(
            optim=defaults["optim"], optim_args=defaults["optim_args"], learning_rate=LR,
            adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS,
        )
        optimizer_cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args)
        kwargs = {k: v for k, v in kwargs.items() if k in ("fused", "foreach")}
        origin = f"Trainer default optim={defaults['optim']!r}"
    else:
        optimizer_cls, kwargs, origin = torch.optim.AdamW, {}, "torch default"
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = optimizer_cls(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS, **kwargs,
    )
    return optimizer, f"{describe(optimizer)} ({origin})"


def describe(optimizer: Any) -> str:
    defaults = optimizer.defaults
    if defaults.get("fused"):
        impl = "fused=True"
    elif defaults.get("foreach"):
        impl = "foreach=True"
    else:
        impl = f"foreach={defaults.get('foreach')} (per-tensor loop on CPU)"
    return f"{type(optimizer).__name__}({impl})"


# ---------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------


def _build(workload: Workload, side: str, size: str, precision: str, hf_optimizer: str, device: str = "cpu",
           batch_size: int | None = None, compiled: bool = False) -> dict[str, Any]:
    """Builds one side on `device` and returns its step function and a description."""
    import torch

    torch.manual_seed(0)
    if side == "nlpkit":
        model, optimizer, loss_fn, optimizer_text = workload.build_nlpkit(size, precision, device, compiled)
    else:
        model, optimizer, loss_fn, optimizer_text = workload.build_transformers(size, precision, hf_optimizer, device)
    model.train()
    batch = workload.make_batch(torch, batch_size or workload.batch_size, device)
    autocast = precision == "bf16"
    device_type = torch.device(device).type

    def step() -> float:
        # float(loss) at the end waits for the device: on a GPU the step has ended once it returns.
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return {"step": step, "optimizer": optimizer_text, "params": sum(p.numel() for p in model.parameters())}


def _import_everything(workload: Workload) -> float:
    """Imports what either side needs (the same on both sides) and returns the RSS after it."""
    import torch  # noqa: F401

    import nlpkit.training.module  # noqa: F401
    import transformers  # noqa: F401

    workload.import_plugin()
    return rss_mib()


def run_timing_child(workload: Workload, size: str, precision: str, steps: int, warmup: int, hf_optimizer: str,
                     threads: int | None, profile: bool, device: str = "cpu",
                     batch_size: int | None = None, compiled: bool = False) -> dict[str, Any]:
    """Builds both sides in this process on `device` and alternates their steps; returns the step times."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    _import_everything(workload)
    sides = {side: _build(workload, side, size, precision, hf_optimizer, device, batch_size, compiled)
             for side in SIDES}
    first_step: dict[str, float] = {}  # with --compile, nlpkit's holds the compilation
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_times: dict[str, list[float]] = {side: [] for side in SIDES}
    losses: dict[str, list[float]] = {side: [] for side in SIDES}
    for i in range(warmup + steps):
        # A B, B A, ...: neither side always runs right after the other's memory traffic.
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            losses[side].append(sides[side]["step"]())
            first_step.setdefault(side, time.perf_counter() - start)
            if i >= warmup:
                times[side].append(time.perf_counter() - start)
                cpu_times[side].append(time.process_time() - start_cpu)
    result: dict[str, Any] = {
        "times": times, "cpu_times": cpu_times, "losses": losses, "threads": torch.get_num_threads(),
        "first_step": first_step,
        "optimizer": {side: sides[side]["optimizer"] for side in SIDES},
        "params": {side: sides[side]["params"] for side in SIDES},
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        result["profile"] = {}
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
        for side in SIDES:
            with torch_profile(activities=activities) as prof:
                sides[side]["step"]()
            result["profile"][side] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return result


def run_memory_child(workload: Workload, side: str, size: str, precision: str, steps: int,
                     hf_optimizer: str) -> dict[str, Any]:
    """Runs `steps` steps of one side alone; returns its peak RSS and the RSS after imports."""
    rss_imports = _import_everything(workload)
    built = _build(workload, side, size, precision, hf_optimizer)
    for _ in range(steps):
        built["step"]()
    return {"rss_imports_mib": rss_imports, "peak_rss_mib": peak_rss_mib()}


# ---------------------------------------------------------------------------
# Parent process: spawn the children, aggregate, print the table
# ---------------------------------------------------------------------------


def main(workload: Workload, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=workload.description)
    size_help = ", ".join(f"{name} ({text})" for name, text in workload.sizes.items())
    parser.add_argument("--sizes", default=",".join(workload.sizes), help=f"comma-separated: {size_help}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per side in each timing process")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per side first, in each process")
    parser.add_argument("--repeats", type=int, default=2, help="timing processes per configuration")
    parser.add_argument("--hf-optimizer", choices=("trainer", "torch-default"), default="trainer",
                        help="transformers side: the Trainer's default AdamW, or torch's default implementation")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the timing processes (default: torch's choice, one per core)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory processes")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per side")
    parser.add_argument("--device", default="cpu",
                        help="torch device both sides run on (cpu, cuda, cuda:1 ...); memory processes: cpu only")
    parser.add_argument("--compile", action="store_true",
                        help="nlpkit side: torch.compile its layers (training.compile: true); prints the first step")
    parser.add_argument("--child", choices=("timing", *SIDES), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    sizes, precisions = options.sizes.split(","), options.precisions.split(",")
    for size in sizes:
        if size not in workload.sizes:
            parser.error(f"unknown size {size!r}; known: {', '.join(workload.sizes)}")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"unknown precision {precision!r}; known: fp32, bf16")
    if options.steps < 1 or options.warmup < 0 or options.repeats < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")

    if options.child == "timing":
        print(json.dumps(run_timing_child(workload, sizes[0], precisions[0], options.steps, options.warmup,
                                          options.hf_optimizer, options.threads, options.profile, options.device,
                                          compiled=options.compile)))
        return
    if options.child:
        print(json.dumps(run_memory_child(workload, options.child, sizes[0], precisions[0], options.warmup + 1,
                                          options.hf_optimizer)))
        return

    common = ["--steps", str(options.steps), "--warmup", str(options.warmup), "--hf-optimizer", options.hf_optimizer]
    threads = ["--threads", str(options.threads)] if options.threads else []
    rows = []
    for size in sizes:
        for precision in precisions:
            where = ["--sizes", size, "--precisions", precision, *common]
            runs = [run_child(workload.script, ["--child", "timing", *where, *threads, "--device", options.device]
                              + (["--compile"] if options.compile else [])
                              + (["--profile"] if options.profile and r == 0 else []))
                    for r in range(options.repeats)]
            times = {side: [t for run in runs for t in run["times"][side]] for side in SIDES}
            cpu_times = {side: [t for run in runs for t in run["cpu_times"][side]] for side in SIDES}
            medians = {side: statistics.median(times[side]) for side in SIDES}
            cpu_medians = {side: statistics.median(cpu_times[side]) for side in SIDES}
            cpu_ratio = cpu_medians["nlpkit"] / cpu_medians["transformers"]
            # Steps i of both sides ran back to back, so their ratio is the least disturbed figure.
            paired = statistics.median(a / b for a, b in zip(times["nlpkit"], times["transformers"]))
            measure_memory = not options.no_memory and options.device == "cpu"
            memory = ({side: run_child(workload.script, ["--child", side, *where]) for side in SIDES}
                      if measure_memory else {})
            rows.append((size, precision, medians, paired, cpu_ratio, memory))

            print(f"\n== {size} {precision}: batch {workload.batch_size} x {workload.length}, {options.warmup} "
                  f"warm-up + {options.steps} steps per side x {options.repeats} processes, "
                  f"{runs[0]['threads']} threads", flush=True)
            for side in SIDES:
                steps_text = ", ".join(f"{t:.3f}" for t in times[side])
                losses = runs[0]["losses"][side]
                mem = memory.get(side)
                mem_text = (f"; peak RSS {mem['peak_rss_mib']:.0f} MiB "
                            f"(+{mem['peak_rss_mib'] - mem['rss_imports_mib']:.0f} over imports)") if mem else ""
                print(f"  {side:12s} {runs[0]['params'][side] / 1e6:.2f}M params, {runs[0]['optimizer'][side]}\n"
                      f"  {'':12s} steps [{steps_text}] s (CPU time median {cpu_medians[side]:.3f} s)"
                      f"{mem_text}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
            if options.compile:
                print(f"  nlpkit compiled (training.compile): first step {runs[0]['first_step']['nlpkit']:.1f} s "
                      f"(compilation included), transformers' first {runs[0]['first_step']['transformers']:.1f} s")
            print(f"  ratio nlpkit/transformers: of medians {medians['nlpkit'] / medians['transformers']:.3f}, "
                  f"median of paired steps {paired:.3f}, of CPU-time medians {cpu_ratio:.3f}", flush=True)
            if options.profile:
                for side in SIDES:
                    print(f"\n-- profile: {side} {size} {precision}\n{runs[0]['profile'][side]}")

    print("\n| size  | precision | nlpkit s/step | transformers s/step | ratio | paired ratio | CPU-time ratio "
          "| nlpkit peak RSS MiB | transformers peak RSS MiB |")
    print("| ----- | --------- | ------------- | ------------------- | ----- | ------------ | -------------- "
          "| ------------------- | ------------------------- |")
    for size, precision, medians, paired, cpu_ratio, memory in rows:
        peaks = {side: f"{memory[side]['peak_rss_mib']:.0f}" if memory else "-" for side in SIDES}
        print(f"| {size:5s} | {precision:9s} | {medians['nlpkit']:13.3f} | {medians['transformers']:19.3f} "
              f"| {medians['nlpkit'] / medians['transformers']:5.3f} | {paired:12.3f} | {cpu_ratio:14.3f} "
              f"| {peaks['nlpkit']:>19s} | {peaks['transformers']:>25s} |")
