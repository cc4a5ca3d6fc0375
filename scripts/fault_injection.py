"""Break a training run on purpose and prove it survives: SIGKILL at random steps, a full disk, a kill in the
middle of a checkpoint write, a corrupt checkpoint, and a NaN gradient.

    python scripts/fault_injection.py --kills 20 [--workdir /tmp/mmmed-faults] [--seed 0]

Every training run is ``python train.py model=tiny ...`` in a process of its own session (a SIGKILL reaches
only it), at one thread and one seed, so "identical" means bit-identical: ``torch.equal`` for every trained
weight, optimizer moment and RNG state, equal step, schedule, skip count and loss history. All runs share one
config, in which a test-only callback (:class:`PoisonGradient`) makes a gradient NaN at step ``POISON_STEP`` and
``nonfinite=skip`` drops that step: so every resume below also proves the skip count survives it.

1. reference: the run, uninterrupted, checkpointing every step.
2. kills: the same run, SIGKILLed ``--kills`` times in a row at random moments (right after a step's
   checkpoint, a random delay later, or as soon as a checkpoint's temp file appears: mid-save), each time
   resumed with ``ckpt_path=<run>/checkpoints/last.ckpt``. Every checkpoint a resumed process writes must
   equal the reference's at that step, and the run's end must equal the reference's end.
3. disk full: a resume under ``RLIMIT_FSIZE`` (a per-process file-size limit, no root needed): a write past
   it fails with EFBIG, the same OSError path a full disk (ENOSPC) takes. The run must stop naming the
   intact checkpoint, leave it byte-for-byte as it was, and finish identically once resumed without the limit.
4. crash mid-save: :class:`Ballast` makes one checkpoint 128 MiB so that its write is slow enough to be caught;
   SIGKILL while it is half on disk. The previous last.ckpt must load and match its sha256.
5. corrupt checkpoint: one flipped byte in last.ckpt, resume_corrupt=error: refused, naming the file. Then
   truncated, resume_corrupt=previous: resumed from the newest valid checkpoint, ending identically.
6. NaN with nonfinite=stop: the run stops at the poisoned step naming it and the last good checkpoint;
   nothing is saved after it. (nonfinite=skip is in every other run: the skipped step leaves weights and
   optimizer state bit-identical to the step before.)

Prints ``k/N identical resumes`` and one line per case; exits 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: mmmed and mmmed_datasets come from this checkout
from mmmed.train.checkpoint_io import CHECKSUM_DIR, checksum_path, checkpoint_step, file_sha256, verify_checkpoint  # noqa: E402

POISON_STEP = 4      # the optimizer step whose gradient PoisonGradient makes NaN
DISK_FULL_FROM = 5   # the disk-full case resumes from this step's checkpoint
MID_SAVE_STEP = 6    # the crash-mid-save case is killed while writing this step's checkpoint
CORRUPT_AT = 7       # the corrupt-checkpoint case damages last.ckpt of this step
BALLAST_MIB = 128
COMPARED = ("global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers", "mmmed_rng",
            "mmmed_nonfinite_skipped")


# ---- test-only callbacks (the child processes import them: PYTHONPATH includes scripts/) ------------------------
class PoisonGradient(L.Callback):
    """Make the first trained parameter's gradient NaN at optimizer step ``step`` (the update completing it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step + 1 == self.step:  # callbacks run before the module's non-finite check
            grad = next(p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
            grad.view(-1)[0] = float("nan")


class Ballast(L.Callback):
    """From optimizer step ``step`` on, add ``mebibytes`` of zeros to each checkpoint: a write slow enough to kill."""

    def __init__(self, step: int, mebibytes: int) -> None:
        self.step, self.mebibytes = step, mebibytes

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.global_step >= self.step:
            checkpoint["fault_injection_ballast"] = torch.zeros(self.mebibytes * 2**20 // 4)


# ---- running train.py -------------------------------------------------------------------------------------------
# Sets a file-size limit in the child itself, then runs train.py as its __main__ (Hydra sees train.py's argv).
LIMITED = ("import resource, runpy, signal, sys; "
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # else the kernel's SIGXFSZ kills instead of EFBIG
           "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
           "sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')")


class Runs:
    """Starts ``train.py`` children with the shared config and keeps their logs."""

    def __init__(self, workdir: Path, demo: Path, max_steps: int) -> None:
        self.workdir, self.max_steps = workdir, max_steps
        self.base = [
            "model=tiny", "logger=csv", f"data.root={demo}", "data.prepare.num_patients=30", "data.prepare.heldout_patients=0",
            "data.prepare.records_per_patient=1", f"trainer.max_steps={max_steps}", "trainer.limit_val_batches=0",
            "test_after_fit=false", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            # Random crops, LoRA dropout and warm-up: data order, augmentation, RNG and schedule must all line up.
            "ecg_signal=strodthoff", f"ecg_signal.cache.cache_dir={workdir / 'cache'}", "stage=instruct",
            "stage.lora.dropout=0.2", "stage.lora.target_modules=[q_proj,v_proj]", "scheduler.warmup_steps=2",
            # A checkpoint every step, all kept: s00001.ckpt, s00002.ckpt, ... and last.ckpt.
            "callbacks.model_checkpoint.monitor=null", "++callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='s{step:05d}'",
            "nonfinite=skip", f"+callbacks.poison={{_target_:fault_injection.PoisonGradient,step:{POISON_STEP}}}",
        ]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
                    "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0", "HYDRA_FULL_ERROR": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "scripts"), os.environ.get("PYTHONPATH")]))}
        self.count = 0

    def start(self, name: str, *overrides: str, file_size_limit: int | None = None) -> subprocess.Popen:
        """Start ``train.py`` with output in ``<workdir>/<name>``; stdout and stderr go to a numbered log there."""
        out = self.workdir / name
        out.mkdir(parents=True, exist_ok=True)
        self.count += 1
        log = open(out / f"train-{self.count:02d}.log", "wb")
        args = [*self.base, *overrides, f"hydra.run.dir={out}"]
        cmd = [sys.executable, "-c", LIMITED.format(limit=file_size_limit), *args] if file_size_limit else \
              [sys.executable, "train.py", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # no signal of ours or the terminal's reaches the driver
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        log.close()  # the child holds its own copy
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
        """Wait for a child; its exit code and log."""
        code = proc.wait(timeout=timeout)
        return code, proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]

    def run(self, name: str, *overrides: str, file_size_limit: int | None = None) -> tuple[int, str]:
        """Run ``train.py`` to its end."""
        return self.finish(self.start(name, *overrides, file_size_limit=file_size_limit))


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child's whole session (its DataLoader workers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_until(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 600) -> bool:
    """Poll ``condition`` every 2 ms; False if the child exited first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            kill(proc)
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.002)
    return True


# ---- what is compared -------------------------------------------------------------------------------------------
def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint values differ: tensors bit for bit (dtype and shape too), the rest with ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b))[:3]}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def checkpoint_differences(a: Path, b: Path) -> list[str]:
    """How two checkpoints of a run differ in what training continues from, plus the loss history."""
    x, y = load(a), load(b)
    found = [d for key in COMPARED for d in differences(x.get(key), y.get(key), key)]
    history = [{k: v for k, v in x["callbacks"].items() if k.startswith("RunSummary")},
               {k: v for k, v in y["callbacks"].items() if k.startswith("RunSummary")}]
    return found + differences(*history, "RunSummary history")


def logged_losses(run: Path) -> dict[int, set[str]]:
    """Every train/loss the CSV logger wrote, per step, over all of a run's processes (exact text)."""
    losses: dict[int, set[str]] = {}
    for table in sorted(run.rglob("metrics.csv")):
        for row in csv.DictReader(table.open()):
            if row.get("train/loss"):
                losses.setdefault(int(row["step"]), set()).add(row["train/loss"])
    return losses


def end_differences(run: Path, reference: Path) -> list[str]:
    """How a finished run's outputs differ from the reference's."""
    found = checkpoint_differences(run / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    if (run / "history.jsonl").read_bytes() != (reference / "history.jsonl").read_bytes():
        found.append("history.jsonl")
    # Tensors and metadata, not bytes: safetensors writes its header's metadata in no fixed order.
    weights = [safe_open(r / "checkpoints" / "trainable.safetensors", "pt") for r in (run, reference)]
    found += differences(*[{k: w.get_tensor(k) for k in w.keys()} for w in weights], "trainable.safetensors")
    found += differences(*[w.metadata() for w in weights], "trainable.safetensors metadata")
    expected = {step: values.pop() for step, values in logged_losses(reference).items()}
    for step, values in logged_losses(run).items():
        if values != {expected.get(step)}:
            found.append(f"train/loss at step {step}: {sorted(values)} vs {expected.get(step)}")
    return found


class Reference:
    """The uninterrupted run's checkpoints by step."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.by_step = {checkpoint_step(p): p for p in (run / "checkpoints").glob("s*.ckpt")}

    def copy(self, step: int, target: Path) -> Path:
        """Put the reference's checkpoint of ``step`` (and its checksum) at ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.by_step[step], target)
        checksum_path(target).parent.mkdir(exist_ok=True)
        checksum_path(target).write_text(f"{file_sha256(target)}  {target.name}\n")
        return target


# ---- the cases --------------------------------------------------------------------------------------------------
class Report:
    """Collects pass/fail lines."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        print(("  ok    " if ok else "  FAIL  ") + message, flush=True)
        if not ok:
            self.failures.append(message)
        return ok


def newest_step(folder: Path, cache: dict) -> int:
    """Step of ``folder/last.ckpt`` (0 if none); re-read only when the file changed."""
    last = folder / "last.ckpt"
    try:
        stamp = last.stat().st_mtime_ns
        if cache.get("stamp") != stamp:
            cache.update(stamp=stamp, step=checkpoint_step(last))
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):  # replaced between stat and load: next poll
        return cache.get("step", 0)
    return cache["step"]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp-*")) if folder.is_dir() else []


def kill_cycles(runs: Runs, ref: Reference, kills: int, rng: random.Random, report: Report) -> None:
    """SIGKILL the run ``kills`` times in a row, each followed by a resume from last.ckpt; compare every resume."""
    name, folder = "killed", runs.workdir / "killed" / "checkpoints"
    identical, mid_save = 0, 0
    done, cache = 0, {}
    resumed_at: int | None = None  # the step the current process resumed from (None: a fresh start)
    for cycle in range(kills + 1):
        started = time.time()
        proc = runs.start(name, *([f"ckpt_path={folder / 'last.ckpt'}"] if done else []))
        if cycle == kills:  # the last resume runs to the end
            code, log = runs.finish(proc)
            ok = code == 0 and not end_differences(runs.workdir / name, ref.run)
        else:
            left = kills - cycle  # kills still to come, this one included: each must find a step to land on
            mode = rng.choice(["after", "delay", "mid-save"])
            # The steps still to go, shared out so that every later kill has steps of its own to land on.
            window = max(1, (runs.max_steps - 2 - done) // left)
            low, high = done + (2 if mode == "mid-save" else 1), done + window
            if low > high:
                mode, low = "after", done + 1
            target = rng.randint(low, high)
            delay = rng.uniform(0.0, 0.1) if mode == "delay" else 0.0
            if mode == "mid-save":  # step target-1 safely saved, then the first checkpoint write seen
                alive = wait_until(proc, lambda: newest_step(folder, cache) >= target - 1 and not temp_files(folder),
                                   f"step {target - 1}")
                alive = alive and wait_until(proc, lambda: bool(temp_files(folder)) or newest_step(folder, cache) > target,
                                             "a checkpoint write")
            else:
                alive = wait_until(proc, lambda: newest_step(folder, cache) >= target, f"step {target}")
                time.sleep(delay)
            if not alive:
                report.check(False, f"kill {cycle + 1}: the run exited ({proc.returncode}) before the kill; see {proc.log_path}")
                return
            kill(proc)
            left_behind = temp_files(folder)
            mid_save += bool(left_behind)
            for ckpt in folder.glob("*.ckpt"):  # every checkpoint on disk is whole and verified
                verify_checkpoint(ckpt)
            previous, done = done, newest_step(folder, cache)
            # What this process wrote (after its resume point) must be the reference's, step for step.
            written = [p for p in folder.glob("s*.ckpt") if p.stat().st_mtime >= started]
            diffs = [f"{p.name}: {d}" for p in written for d in checkpoint_differences(p, ref.by_step[checkpoint_step(p)])]
            ok = bool(written) and not diffs
            print(f"kill {cycle + 1}/{kills}: {mode:8s} at step {target}{f' +{delay:.3f} s' if delay else ''}; "
                  f"{'mid-save (left ' + ', '.join(left_behind) + ')' if left_behind else 'between saves'}; "
                  f"last.ckpt valid at step {done} (was {previous})" + (f"; DIFFERS: {diffs[:3]}" if diffs else ""),
                  flush=True)
        if cycle > 0:  # the process just ended was a resume
            identical += ok
        elif not ok:
            report.check(False, "the first (fresh) process's checkpoints differ from the reference's")
        resumed_at = done
    report.check(identical == kills, f"{identical}/{kills} identical resumes "
                 f"({mid_save} kills landed mid-save; the run resumed up to step {resumed_at}, then ended "
                 f"bit-identical to the uninterrupted run)")


def disk_full(runs: Runs, ref: Reference, report: Report) -> None:
    """A resume whose first checkpoint write exceeds RLIMIT_FSIZE: stop, name the intact checkpoint, finish later."""
    run = runs.workdir / "disk_full"
    last = ref.copy(DISK_FULL_FROM, run / "checkpoints" / "last.ckpt")
    before = last.read_bytes()
    limit = last.stat().st_size // 2  # below one checkpoint, far above the logs and config files the run writes
    code, log = runs.run("disk_full", f"ckpt_path={last}", file_size_limit=limit)
    expected = (f"file too large (EFBIG) while saving checkpoint {run / 'checkpoints'}/s{DISK_FULL_FROM + 1:05d}.ckpt; "
                f"the previous checkpoint {last} is intact; free space and resume with ckpt_path={last}")
    report.check(code != 0 and "CheckpointSaveError" in log and expected in log,
                 f"disk full (simulated by RLIMIT_FSIZE={limit:,} bytes: EFBIG, the OSError path ENOSPC takes): "
                 f"the run stopped saying '{expected.split(';')[0]}; the previous checkpoint ... is intact'")
    report.check(last.read_bytes() == before and not temp_files(last.parent) and
                 sorted(p.name for p in last.parent.iterdir()) == [".checksums", "last.ckpt"] and
                 [p.name for p in checksum_path(last).parent.iterdir()] == ["last.ckpt.sha256"],
                 "disk full: last.ckpt unchanged byte for byte, no temp or partial files left")
    code, _ = runs.run("disk_full", f"ckpt_path={last}")
    diffs = end_differences(run, ref.run) if code == 0 else ["exit code"]
    report.check(not diffs, f"disk full: resumed with room again, the run ended identical to the uninterrupted one {diffs[:3]}")


def crash_mid_save(runs: Runs, ref: Reference, report: Report) -> None:
    """SIGKILL while a 128 MiB checkpoint is half written: the previous last.ckpt stays whole and verified."""
    run = runs.workdir / "mid_save"
    folder = run / "checkpoints"
    start = ref.copy(MID_SAVE_STEP - 2, run / "resume_from.ckpt")
    proc = runs.start("mid_save", f"ckpt_path={start}",
                      f"+callbacks.ballast={{_target_:fault_injection.Ballast,step:{MID_SAVE_STEP},mebibytes:{BALLAST_MIB}}}")
    partial = folder / CHECKSUM_DIR / f"s{MID_SAVE_STEP:05d}.ckpt.tmp-{proc.pid}"
    alive = wait_until(proc, lambda: partial.is_file() and partial.stat().st_size > 2**20, f"{partial.name} to grow")
    kill(proc)
    size = partial.stat().st_size if partial.is_file() else 0
    last = folder / "last.ckpt"
    recorded = checksum_path(last).read_text().split()[0] if checksum_path(last).is_file() else None
    ok = alive and 0 < size < BALLAST_MIB * 2**20 and recorded == file_sha256(last) and \
        load(last)["global_step"] == MID_SAVE_STEP - 1 and not (folder / f"s{MID_SAVE_STEP:05d}.ckpt").exists()
    report.check(ok, f"crash mid-save: SIGKILL with {size / 2**20:.1f} of ~{BALLAST_MIB} MiB of step {MID_SAVE_STEP}'s "
                     f"checkpoint on disk (as {partial.name}); last.ckpt still holds step {MID_SAVE_STEP - 1}, loads, "
                     f"and matches its sha256")


def corrupt(runs: Runs, ref: Reference, report: Report) -> None:
    """A damaged last.ckpt: refused by name (error), or passed over for the newest valid one (previous)."""
    run = runs.workdir / "corrupt"
    folder = run / "checkpoints"
    for step in (CORRUPT_AT - 1, CORRUPT_AT):
        ref.copy(step, folder / f"s{step:05d}.ckpt")
    last = ref.copy(CORRUPT_AT, folder / "last.ckpt")
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    last.write_bytes(bytes(data))
    code, log = runs.run("corrupt", f"ckpt_path={last}", "resume_corrupt=error")
    report.check(code != 0 and f"CorruptCheckpointError: checkpoint {last} is corrupt" in log,
                 "corrupt checkpoint (one bit flipped), resume_corrupt=error: refused, naming the file and its checksum")
    last.write_bytes(bytes(data[: len(data) // 3]))
    code, log = runs.run("corrupt", f"ckpt_path={last}", "resume_corrupt=previous")
    fell_back = f"resume_corrupt=previous: resuming from {folder / f's{CORRUPT_AT:05d}.ckpt'}" in log
    diffs = end_differences(run, ref.run) if code == 0 else ["exit code"]
    report.check(fell_back and not diffs, f"corrupt checkpoint (truncated), resume_corrupt=previous: resumed from "
                 f"s{CORRUPT_AT:05d}.ckpt and ended identical to the uninterrupted run {diffs[:3]}")


def nonfinite(runs: Runs, ref: Reference, report: Report) -> None:
    """nonfinite=skip (every run): the poisoned step changes nothing; nonfinite=stop: stops, saves nothing after."""
    before, after = load(ref.by_step[POISON_STEP - 1]), load(ref.by_step[POISON_STEP])
    # The moments and step counts; the param groups' lr moves on with the schedule, as it should.
    same = not differences(before["state_dict"], after["state_dict"]) and \
        not differences([o["state"] for o in before["optimizer_states"]], [o["state"] for o in after["optimizer_states"]])
    final = load(ref.run / "checkpoints" / "last.ckpt")
    report.check(same and final["mmmed_nonfinite_skipped"] == 1 and
                 all(torch.isfinite(v).all() for v in final["state_dict"].values()),
                 f"NaN gradient, nonfinite=skip: step {POISON_STEP} skipped, weights, buffers and optimizer moments bit-identical "
                 f"to step {POISON_STEP - 1}, all weights finite, 1 skip counted (kept across every resume above)")
    run = runs.workdir / "nan_stop"
    start = ref.copy(POISON_STEP - 3, run / "resume_from.ckpt")
    code, log = runs.run("nan_stop", f"ckpt_path={start}", "nonfinite=stop")
    last = run / "checkpoints" / "last.ckpt"
    steps = sorted(checkpoint_step(p) for p in (run / "checkpoints").glob("*.ckpt"))
    expected = f"at training step {POISON_STEP}: stopped before the optimizer step (nonfinite=stop)"
    report.check(code != 0 and "NonFiniteError" in log and expected in log and f"last good checkpoint is {last}" in log
                 and steps and max(steps) == POISON_STEP - 1,
                 f"NaN gradient, nonfinite=stop: stopped '{expected}', naming last.ckpt (step {POISON_STEP - 1}); "
                 f"no checkpoint after it (saved steps {sorted(set(steps))})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in a row, each followed by a resume")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the runs go; its run folders are replaced (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    args = parser.parse_args()
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="mmmed-faults-"))).resolve()
    print(f"runs in {workdir}", flush=True)
    for name in ("reference", "killed", "disk_full", "mid_save", "corrupt", "nan_stop"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    demo = ensure_demo_ptbxl(workdir / "demo", num_patients=30, records_per_patient=1, seed=0)
    max_steps = max(12, args.kills + 6)  # every kill lands on a step of its own
    runs, report = Runs(workdir, demo, max_steps), Report()
    print(f"reference run: {max_steps} steps, model=tiny, one checkpoint per step", flush=True)
    code, _ = runs.run("reference")
    if code != 0:
        print(f"reference run failed ({code}); see {workdir / 'reference'}")
        return 1
    ref = Reference(workdir / "reference")
    kill_cycles(runs, ref, args.kills, random.Random(args.seed), report)
    disk_full(runs, ref, report)
    crash_mid_save(runs, ref, report)
    corrupt(runs, ref, report)
    nonfinite(runs, ref, report)
    print(json.dumps({"failures": report.failures, "train_processes": runs.count}))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
