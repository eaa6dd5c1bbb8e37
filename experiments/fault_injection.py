"""Fault injection: real `python -m ssl_jax.main` runs, killed, corrupted, starved
of disk, started twice, resumed with another config, fed a broken log, diverged.

    python experiments/fault_injection.py --out=/tmp/faults
    python experiments/fault_injection.py --out=/tmp/faults --trials=lock,config/seed

Every trial runs small runs (`--config`, 40 steps, a checkpoint every 5, a
light probe) in its own directory under `--out` (which must be empty), injects
one fault and checks what the package promises: a failure is one line on
stderr and exit code 2 (143 / 130 after SIGTERM / SIGINT), the rerun of the
same command resumes and ends in the state of an uninterrupted reference run
(`state_fingerprint` in results.json) with every step logged once, and nothing
saved before the fault is lost. The signal trials log every
`SIGNAL_LOG_EVERY` steps, so the stop falls between two log lines, and their
resumed `metrics.jsonl` must be the reference's row for row (the same steps,
every figure but the wall-clock ones bit for bit). One row per trial:

- outcome: what happened, as observed;
- lost: a checkpoint saved before the fault vanished or changed (other than
  rotated out by `keep_checkpoints`, or moved intact to corrupt_checkpoints/),
  a logged loss changed, or the final state differs from the reference;
- silent: a failure that looks like success (exit 0 with a wrong fingerprint,
  no results.json, a step logged twice or missing, an unreadable metrics
  line), or one that is not one clear line (a traceback, several error lines,
  a non-zero exit without a message, a hang);
- ok: whether the trial went as promised (else the notes under the table say
  what differed).

Full disk: a real tmpfs when this runs as root and can mount one (unmounted
afterwards), else RLIMIT_FSIZE. Exit code 1 if any trial is silent, lost
something or did not go as promised. Each run's stderr is kept in `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY, KEEP = 40, 5, 3
# The signal trials' log interval (a checkpoint step must be a log step): a
# stop mostly falls between two log lines.
SIGNAL_LOG_EVERY = CHECKPOINT_EVERY
# A log row's wall-clock figures: the only fields a resumed run may change.
WALL_TIME = ("images_per_sec", "mfu")
# Small runs: training is what the faults hit; keep the evaluation after it light.
COMMON = (
    f"--config.train_steps={STEPS}",
    f"--config.checkpoint_every={CHECKPOINT_EVERY}",
    f"--config.keep_checkpoints={KEEP}",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.baselines.random_init=false",
    "--config.probe.steps=20",
    "--config.probe.labels_per_class=()",
)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TIMEOUT = 300  # seconds for one run; a run that takes longer counts as hung
PAGE = 4096
# The package's own final line, and absl's ERROR / FATAL lines.
_ERROR_LINE = re.compile(r"^(ssl_jax:|[EF]\d{4} )")


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Result:
    code: int
    stderr: str
    hung: bool = False

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if _ERROR_LINE.match(line)]


class Job:
    """One `python -m ssl_jax.main` subprocess. Its stderr goes to a file in
    --out: a pipe that nobody reads while we poll the workdir could fill up
    and block the run."""

    live: set[subprocess.Popen] = set()

    def __init__(self, ctx: Context, workdir: pathlib.Path, *overrides: str, preexec_fn=None):
        self.log = ctx.log_path(workdir)
        command = [
            sys.executable,
            "-m",
            "ssl_jax.main",
            f"--config={ctx.config}",
            f"--workdir={workdir}",
            *COMMON,
            *overrides,  # after COMMON: the last value of a field wins
        ]
        with open(self.log, "w") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=preexec_fn,
            )
        Job.live.add(self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            self.process.send_signal(signum)

    def finish(self) -> Result:
        hung = False
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            hung = True
            self.process.kill()
            self.process.wait()
        Job.live.discard(self.process)
        return Result(self.process.returncode, self.log.read_text(errors="replace"), hung)


def wait_until(job: Job, condition: Callable[[], bool], poll: float = 0.002) -> bool:
    """Polls `condition` while the job runs; False if it ended (or hung) first."""
    deadline = time.time() + TIMEOUT
    while job.running() and time.time() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


# ----------------------------------------------------------------------------- the workdir


def metrics_lines(workdir: pathlib.Path) -> list[str]:
    try:
        return (workdir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def records(workdir: pathlib.Path) -> tuple[list[dict], int]:
    """The readable records of metrics.jsonl and the number of unreadable lines."""
    good, bad = [], 0
    for line in metrics_lines(workdir):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "step" in record:
            good.append(record)
        elif line.strip():
            bad += 1
    return good, bad


def rows(workdir: pathlib.Path) -> list[dict]:
    """The readable records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in WALL_TIME} for r in records(workdir)[0]]


def log_steps(steps: int = STEPS, log_every: int = 1) -> list[int]:
    """The steps a run of `steps` steps logs (the grid, and its last step)."""
    return [s for s in range(1, steps + 1) if s % log_every == 0 or s == steps]


def last_step(workdir: pathlib.Path) -> int:
    return max((r["step"] for r in records(workdir)[0]), default=0)


def losses(workdir: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r.get("loss") for r in records(workdir)[0]}


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    """Committed checkpoints (orbax writes into `<step>.orbax-checkpoint-tmp`
    and renames it to `<step>` when complete)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def snapshot(workdir: pathlib.Path) -> dict[str, str]:
    """{path relative to the workdir: SHA-256} of every file, through symlinks
    (the full-disk trials put directories on another filesystem). The lock
    file is left out: it is the lock's business."""
    files = {}
    for root, _, names in os.walk(workdir, followlinks=True):
        for name in names:
            path = pathlib.Path(root, name)
            relative = path.relative_to(workdir).as_posix()
            if relative != "ssl_jax.lock" and path.is_file():
                files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def fingerprint(workdir: pathlib.Path) -> str | None:
    try:
        return json.loads((workdir / "results.json").read_text())["state_fingerprint"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def resumed_from(stderr: str) -> int | None:
    found = re.findall(r"Resumed from the checkpoint of step (\d+)", stderr)
    return int(found[-1]) if found else None


def data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The state's array data files (tensorstore's chunks, in `d/` directories),
    largest first."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def pages(directory: pathlib.Path) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) for p in directory.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- verdicts


@dataclasses.dataclass
class Reference:
    workdir: pathlib.Path
    fingerprint: str
    losses: dict[int, float]
    rows: list[dict] = dataclasses.field(default_factory=list)  # `rows(workdir)`


@dataclasses.dataclass
class Row:
    trial: str
    done: str
    exit: str
    message: str
    outcome: str
    lost: list[str]
    silent: list[str]
    unexpected: list[str]
    reported: bool  # the fault ended the run with its one line (exit 2 / 130 / 143)


def audit(
    result: Result, workdir: pathlib.Path, ref: Reference | None, steps=STEPS, log_every=1
) -> list[str]:
    """Why `result` is a silent failure ([] when it is not). Exit 0 must mean
    a results.json with the reference's fingerprint (when `ref` is given) and
    the steps of `log_steps(steps, log_every)` logged once each, no other."""
    why = []
    if result.hung:
        why.append(f"hung (killed after {TIMEOUT} s)")
    if "Traceback" in result.stderr:
        why.append("a traceback on stderr")
    if len(result.lines) > 1:
        why.append(f"{len(result.lines)} error lines")
    if result.code != 0:
        if not result.lines and not result.hung:
            why.append(f"exit {result.code} without a message")
        return why
    if result.lines:
        why.append("exit 0 with an error line")
    got = fingerprint(workdir)
    if got is None:
        why.append("exit 0 without results.json")
    elif ref is not None and got != ref.fingerprint:
        why.append("exit 0 with a state that differs from the reference")
    logged, unreadable = records(workdir)
    logged_steps, expected = [r["step"] for r in logged], log_steps(steps, log_every)
    if sorted(logged_steps) != expected:
        twice = sorted({s for s in logged_steps if logged_steps.count(s) > 1})
        missing = sorted(set(expected) - set(logged_steps))
        extra = sorted(set(logged_steps) - set(expected))
        off_grid = f", off the log grid {extra[:5]}" if extra else ""
        why.append(
            f"metrics.jsonl: steps logged twice {twice[:5]}, missing {missing[:5]}{off_grid}"
        )
    if unreadable:
        why.append(f"metrics.jsonl keeps {unreadable} unreadable line(s)")
    return why


def lost_checkpoints(before: dict[str, str], workdir: pathlib.Path) -> list[str]:
    """Checkpoints in the `before` snapshot that are gone or changed now,
    except those rotated out (`KEEP` newer ones exist) and those moved intact
    to corrupt_checkpoints/."""
    now = snapshot(workdir)
    steps_now = checkpoint_steps(workdir)
    by_step: dict[int, dict[str, str]] = {}
    for path, digest in before.items():
        parts = path.split("/")
        if parts[0] == "checkpoints" and parts[1].isdigit():
            by_step.setdefault(int(parts[1]), {})[path] = digest
    lost = []
    for step, files in sorted(by_step.items()):
        live = {p: now.get(p) for p in files}
        moved = {p: now.get(p.replace("checkpoints/", "corrupt_checkpoints/", 1)) for p in files}
        rotated = not any(live.values()) and sum(s > step for s in steps_now) >= KEEP
        if live != files and moved != files and not rotated:
            lost.append(f"checkpoint {step} changed or vanished")
    return lost


def lost_results(workdir: pathlib.Path, ref: Reference, *, same_end: bool = True) -> list[str]:
    """The final state against the reference (if the run should end there),
    and every logged loss against the reference's at the same step (bit for
    bit: resume is exact)."""
    lost = []
    got = fingerprint(workdir)
    if same_end and got is not None and got != ref.fingerprint:
        lost.append("the final state differs from the reference")
    changed = [
        s for s, loss in losses(workdir).items() if s in ref.losses and loss != ref.losses[s]
    ]
    if changed:
        lost.append(f"logged losses differ from the reference at steps {changed[:5]}")
    return lost


def rows_differ(workdir: pathlib.Path, ref: Reference) -> list[str]:
    """The finished run's log against the reference's, row for row: the same
    steps and every figure but the wall-clock ones equal (bit for bit)."""
    got, want = {r["step"]: r for r in rows(workdir)}, {r["step"]: r for r in ref.rows}
    if sorted(got) != sorted(want):
        return [f"metrics.jsonl logs steps {sorted(got)[:8]}, the reference {sorted(want)[:8]}"]
    differ = []
    for step, row in sorted(got.items()):
        other = want[step]
        fields = sorted(k for k in row.keys() | other.keys() if row.get(k) != other.get(k))
        if fields:
            differ.append(f"{step} ({', '.join(fields)})")
    if not differ:
        return []
    return [f"metrics.jsonl rows differ from the reference at steps {'; '.join(differ[:3])}"]


def expect(problems: list[str], condition: bool, text: str) -> None:
    if not condition:
        problems.append(text)


def error_row(trial, done, result, outcome, *, silent, lost, unexpected, expected_code=2) -> Row:
    """A row for a run that the fault should end with one line and `expected_code`."""
    expect(unexpected, result.code == expected_code, f"exit {result.code}, not {expected_code}")
    expect(unexpected, len(result.lines) == 1, f"{len(result.lines)} message lines, not 1")
    reported = result.code == expected_code and len(result.lines) == 1
    return Row(
        trial, done, str(result.code), _message(result), outcome, lost, silent, unexpected, reported
    )


def _message(result: Result) -> str:
    return result.lines[0] if result.lines else ""


def _ended(result: Result, expected_code: int, text: str) -> str:
    """`text` if the run ended with `expected_code`, else how it did end."""
    if result.code == expected_code:
        return text
    return "accepted (exit 0)" if result.code == 0 else f"exit {result.code}"


# ----------------------------------------------------------------------------- context


@dataclasses.dataclass
class Context:
    out: pathlib.Path
    config: str
    seed: int
    tmpfs: bool = False  # fill a real (tmpfs) disk, else limit file sizes
    _references: dict[tuple[str, ...], Reference] = dataclasses.field(default_factory=dict)
    _logs: int = 0

    def rng(self, trial: str) -> random.Random:
        """The same draws for a trial whatever else is selected."""
        return random.Random(f"{self.seed}:{trial}")

    def workdir(self, trial: str) -> pathlib.Path:
        return self.out / trial.replace("/", "_")

    def log_path(self, workdir: pathlib.Path) -> pathlib.Path:
        self._logs += 1
        return self.out / "logs" / f"{self._logs:02d}_{workdir.name}.stderr"

    def run(self, workdir: pathlib.Path, *overrides: str, preexec_fn=None) -> Result:
        return Job(self, workdir, *overrides, preexec_fn=preexec_fn).finish()

    def reference(self, *overrides: str) -> Reference:
        """The uninterrupted run every exact resume is compared with (once per
        set of `overrides`, which must not change the final state)."""
        if overrides not in self._references:
            workdir = self.workdir("_".join(["reference", *overrides]).replace("=", "_"))
            result = self.run(workdir, *overrides)
            if result.code != 0 or fingerprint(workdir) is None:
                raise SystemExit(
                    f"The reference run failed ({result.code}):\n{result.stderr[-3000:]}"
                )
            ref = Reference(workdir, fingerprint(workdir), losses(workdir), rows(workdir))
            self._references[overrides] = ref
        return self._references[overrides]

    def copy_of_reference(self, trial: str) -> pathlib.Path:
        """A finished run's workdir to inject a fault into."""
        workdir = self.workdir(trial)
        shutil.copytree(self.reference().workdir, workdir, symlinks=True)
        return workdir


# ----------------------------------------------------------------------------- 1-2: kill, signal


def _mid_training(job: Job, workdir: pathlib.Path, rng: random.Random) -> str:
    step = rng.randint(6, STEPS - 6)
    if not wait_until(job, lambda: last_step(workdir) >= step):
        return "the run ended before the kill"
    return f"after step {last_step(workdir)} was logged"


def _mid_save(job: Job, workdir: pathlib.Path, rng: random.Random) -> str:
    """As soon as orbax's temporary directory of a chosen checkpoint appears."""
    step = rng.randrange(2 * CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY)
    tmp = workdir / "checkpoints" / f"{step}.orbax-checkpoint-tmp"
    if not wait_until(job, tmp.exists, poll=0.0005):
        return "the run ended before the kill"
    return f"while checkpoint {step} was being written" + (
        "" if tmp.exists() else " (it completed as the kill came)"
    )


def _mid_probe(job: Job, workdir: pathlib.Path, rng: random.Random) -> str:
    """After the last checkpoint is complete, while the linear probe runs."""
    final = workdir / "checkpoints" / str(STEPS)
    if not wait_until(job, lambda: final.is_dir() and last_step(workdir) == STEPS):
        return "the run ended before the kill"
    time.sleep(rng.uniform(0.2, 1.0))
    if (workdir / "results.json").exists():
        return "after results.json was written (too late for a probe kill)"
    return "during the final probe (training and its last checkpoint done)"


def _kill_case(ctx: Context, trial: str, moment: Callable) -> Row:
    """SIGKILL at `moment`, then the same command again."""
    ref, workdir = ctx.reference(), ctx.workdir(trial)
    job = Job(ctx, workdir)
    when = moment(job, workdir, ctx.rng(trial))
    job.signal(signal.SIGKILL)
    killed = job.finish()
    latest, before = (checkpoint_steps(workdir) or [None])[-1], snapshot(workdir)
    rerun = ctx.run(workdir)

    silent = audit(rerun, workdir, ref)
    if "Traceback" in killed.stderr:
        silent.append("a traceback before the kill")
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    resumed, unexpected = resumed_from(rerun.stderr), []
    expect(unexpected, killed.code == -signal.SIGKILL, f"the run ended ({killed.code}) {when}")
    expect(unexpected, rerun.code == 0, f"the rerun exited {rerun.code}")
    if latest is not None:
        expect(unexpected, resumed == latest, f"resumed from {resumed}, the latest was {latest}")
        lost += [] if resumed in (None, latest) else [f"checkpoint {latest} was not used"]
    expect(unexpected, "Taking over the lock of process" in rerun.stderr, "no stale-lock notice")
    leftovers = [p.name for p in (workdir / "checkpoints").glob("*tmp*")]
    expect(unexpected, not leftovers, f"half-written checkpoints left: {leftovers}")
    outcome = f"resumed from step {resumed}" if resumed is not None else "started over"
    if rerun.code == 0 and not lost and not silent:
        outcome += ", exact"
    return Row(
        trial,
        f"SIGKILL {when}; rerun",
        f"-9, rerun {rerun.code}",
        _message(rerun),
        outcome,
        lost,
        silent,
        unexpected,
        reported=False,
    )


def trial_kill_training(ctx):
    return _kill_case(ctx, "kill/training", _mid_training)


def trial_kill_save(ctx):
    return _kill_case(ctx, "kill/save", _mid_save)


def trial_kill_probe(ctx):
    return _kill_case(ctx, "kill/probe", _mid_probe)


def _signal_case(ctx: Context, trial: str, signum: int) -> Row:
    """A stop request mid-training, logging every `SIGNAL_LOG_EVERY` steps:
    the loop checkpoints the step, says so in one line and exits 128 +
    signum; the rerun resumes exactly, its log included (no row at the stop
    step, the next row averaged over the whole interval)."""
    overrides = (f"--config.log_every={SIGNAL_LOG_EVERY}",)
    ref, workdir, rng = ctx.reference(*overrides), ctx.workdir(trial), ctx.rng(trial)
    name = signal.Signals(signum).name
    job = Job(ctx, workdir, *overrides)
    when = _mid_training(job, workdir, rng)
    # A moment into the next interval, so the stop mostly falls inside it.
    time.sleep(rng.uniform(0.0, 0.3))
    job.signal(signum)
    stopped = job.finish()
    before, saved = snapshot(workdir), checkpoint_steps(workdir)
    rerun = ctx.run(workdir, *overrides)

    silent, unexpected = audit(stopped, workdir, ref, log_every=SIGNAL_LOG_EVERY), []
    silent += [f"rerun: {why}" for why in audit(rerun, workdir, ref, log_every=SIGNAL_LOG_EVERY)]
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    lost += rows_differ(workdir, ref) if rerun.code == 0 else []
    found = re.search(r"at step (\d+); its checkpoint is saved in (\S+)\. Rerun", _message(stopped))
    step = int(found[1]) if found else None
    expect(unexpected, found is not None, "the line names no step and checkpoint")
    if found:
        named = pathlib.Path(found[2])
        expect(unexpected, named == workdir / "checkpoints" / str(step), f"it names {named}")
        expect(unexpected, step in saved, f"checkpoint {step} was not there after the stop")
        expect(unexpected, resumed_from(rerun.stderr) == step, "the rerun did not resume from it")
    expect(unexpected, rerun.code == 0, f"the rerun exited {rerun.code}")
    stop = "stopped"
    if found:
        grid = "on" if step % SIGNAL_LOG_EVERY == 0 else "off"
        stop = f"stopped cleanly at step {step} ({grid} the log grid)"
    outcome = (
        _ended(stopped, 128 + signum, stop) + f"; rerun resumed from {resumed_from(rerun.stderr)}"
    )
    if rerun.code == 0 and not lost and not silent:
        outcome += ", exact (state, log)"
    row = error_row(
        trial,
        f"{name} {when}; rerun",
        stopped,
        outcome,
        silent=silent,
        lost=lost,
        unexpected=unexpected,
        expected_code=128 + signum,
    )
    row.exit += f", rerun {rerun.code}"
    return row


def trial_signal_sigterm(ctx):
    return _signal_case(ctx, "signal/SIGTERM", signal.SIGTERM)


def trial_signal_sigint(ctx):
    return _signal_case(ctx, "signal/SIGINT", signal.SIGINT)


# ----------------------------------------------------------------------------- 3: corrupt


def _flip(step_dir: pathlib.Path, rng: random.Random) -> str:
    """Bytes flipped in the middle of the largest array file, as a bad disk or
    a careless copy leaves them: orbax's reader itself does not notice."""
    path = data_files(step_dir)[0]
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data) // 4, 3 * len(data) // 4)
    for i in range(at, min(at + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"flipped 8 bytes of {path.name[:8]}… ({len(data)} B)"


def _delete(step_dir: pathlib.Path, rng: random.Random) -> str:
    path = data_files(step_dir)[0]
    path.unlink()
    return f"deleted {path.name[:8]}…"


def _truncate(step_dir: pathlib.Path, rng: random.Random) -> str:
    path = data_files(step_dir)[0]
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return f"truncated {path.name[:8]}… to {size // 2} of {size} B"


def _corrupt_case(ctx: Context, trial: str, damage: Callable) -> Row:
    """The latest checkpoint damaged: the rerun falls back to the one before
    with one warning, moves the bad one aside and retrains to the same end."""
    ref = ctx.reference()
    workdir = ctx.copy_of_reference(trial)
    latest, previous = checkpoint_steps(workdir)[-2:][::-1]
    what = damage(workdir / "checkpoints" / str(latest), ctx.rng(trial))
    before = snapshot(workdir)
    rerun = ctx.run(workdir)

    silent = audit(rerun, workdir, ref)
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    warnings = [line for line in rerun.stderr.splitlines() if "corrupt_checkpoints" in line]
    unexpected = []
    expect(unexpected, rerun.code == 0, f"the rerun exited {rerun.code}")
    expect(unexpected, len(warnings) == 1, f"{len(warnings)} warning lines, not 1")
    expect(unexpected, resumed_from(rerun.stderr) == previous, f"did not resume from {previous}")
    moved = workdir / "corrupt_checkpoints" / str(latest)
    expect(unexpected, moved.is_dir(), f"{latest} was not moved to corrupt_checkpoints/")
    outcome = f"fell back to step {resumed_from(rerun.stderr)}; " + (
        f"{latest} moved aside" if moved.is_dir() else "nothing moved aside"
    )
    if rerun.code == 0 and not lost and not silent:
        outcome += ", exact"
    warning = warnings[0].split("] ", 1)[-1] if warnings else _message(rerun)
    return Row(
        trial,
        f"checkpoint {latest}: {what}; rerun",
        str(rerun.code),
        warning,
        outcome,
        lost,
        silent,
        unexpected,
        reported=False,
    )


def trial_corrupt_flip(ctx):
    return _corrupt_case(ctx, "corrupt/flip", _flip)


def trial_corrupt_delete(ctx):
    return _corrupt_case(ctx, "corrupt/delete", _delete)


def trial_corrupt_truncate(ctx):
    return _corrupt_case(ctx, "corrupt/truncate", _truncate)


def trial_corrupt_only(ctx):
    """The only checkpoint (keep_checkpoints=1) corrupt: nothing to fall back
    to, so one line, exit 2, and nothing moved or deleted."""
    trial = "corrupt/only"
    workdir = ctx.copy_of_reference(trial)
    *older, latest = checkpoint_steps(workdir)
    for step in older:  # what keep_checkpoints=1 leaves
        shutil.rmtree(workdir / "checkpoints" / str(step))
    what = _flip(workdir / "checkpoints" / str(latest), ctx.rng(trial))
    before = snapshot(workdir)
    result = ctx.run(workdir, "--config.keep_checkpoints=1")
    silent, unexpected = audit(result, workdir, None), []
    lost = [] if snapshot(workdir) == before else ["files of the workdir changed"]
    expect(unexpected, "No usable checkpoint" in _message(result), "the line does not say so")
    expect(unexpected, not (workdir / "corrupt_checkpoints").exists(), "something was moved")
    return error_row(
        trial,
        f"keep_checkpoints=1, checkpoint {latest}: {what}; rerun",
        result,
        _ended(result, 2, "refused; nothing moved" if not lost else "refused; files changed"),
        silent=silent,
        lost=lost,
        unexpected=unexpected,
    )


# ----------------------------------------------------------------------------- 4: full disk


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = tempfile.mkdtemp(prefix="ssl_jax_tmpfs_probe_")
    try:
        command = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe]
        ok = subprocess.run(command, capture_output=True).returncode
        if ok == 0:
            subprocess.run(["umount", probe], check=True)
        return ok == 0
    finally:
        os.rmdir(probe)


@contextlib.contextmanager
def small_disk(path: pathlib.Path, free_pages: int):
    """A tmpfs at `path` filled (by `path/filler`) to `free_pages` free pages;
    unmounted on leaving. Deleting the filler is "freeing space"."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=True)
    try:
        stat = os.statvfs(path)
        with open(path / "filler", "wb") as f:
            f.write(b"\0" * ((stat.f_bavail - free_pages) * stat.f_frsize))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _file_size_limit(limit: int):
    """A full disk as the process sees it: writes past `limit` bytes fail (EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _disk_case(ctx: Context, trial: str, filling: str) -> Row:
    """The disk fills under the metrics file (the main thread's write) or
    under a checkpoint (orbax's background writer); after freeing space the
    same command resumes. With tmpfs, the other part of the workdir lives on
    the regular disk (a symlink), so the named write is the one that fails."""
    ref = ctx.reference()
    workdir = ctx.workdir(trial)
    extra = []
    with contextlib.ExitStack() as stack:
        if ctx.tmpfs:
            mount = ctx.out / f"{trial.replace('/', '_')}.tmpfs"
            if filling == "metrics":
                # The lock, config.json, the events file and one page of
                # metrics.jsonl fit; its second page (about step 21) does not.
                disk = stack.enter_context(small_disk(mount, free_pages=4))
                workdir = disk / workdir.name
                workdir.mkdir()
                elsewhere = ctx.out / f"{workdir.name}.checkpoints"
                elsewhere.mkdir()
                (workdir / "checkpoints").symlink_to(elsewhere)
            else:
                # Two and a half checkpoints fit: the third save fails.
                size = pages(ref.workdir / "checkpoints" / str(STEPS))
                disk = stack.enter_context(small_disk(mount, free_pages=int(2.5 * size)))
                (disk / "checkpoints").mkdir()
                workdir.mkdir()
                (workdir / "checkpoints").symlink_to(disk / "checkpoints")
            room = "4 pages" if filling == "metrics" else "2.5 checkpoints"
            how = f"tmpfs filled to {room} free; the {filling} write fills it; space freed"
            result = ctx.run(workdir)
            (disk / "filler").unlink()
        else:
            if filling == "metrics":
                # No checkpoint before metrics.jsonl passes the limit (~step 20).
                extra, limit = [f"--config.checkpoint_every={STEPS}"], 4000
            else:
                limit = data_files(ref.workdir / "checkpoints" / str(STEPS))[0].stat().st_size // 2
            how = f"RLIMIT_FSIZE={limit} B; the {filling} write passes it; limit lifted"
            result = ctx.run(workdir, *extra, preexec_fn=_file_size_limit(limit))
        before, stopped_at = snapshot(workdir), last_step(workdir)
        rerun = ctx.run(workdir, *extra)

        silent = audit(result, workdir, ref)
        silent += [f"rerun: {why}" for why in audit(rerun, workdir, ref)]
        lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
        unexpected = []
        named = "metrics.jsonl" if filling == "metrics" else "checkpoint of step"
        expect(unexpected, named in _message(result), f"the line does not name the {filling}")
        expect(
            unexpected, "Free disk space" in _message(result), "the line does not say what to do"
        )
        expect(unexpected, rerun.code == 0, f"the rerun after freeing space exited {rerun.code}")
        resumed = resumed_from(rerun.stderr)
        outcome = f"one line at step {stopped_at}; after freeing space " + (
            f"resumed from step {resumed}" if resumed is not None else "started over (none saved)"
        )
        if rerun.code == 0 and not lost and not silent:
            outcome += ", exact"
        row = error_row(
            trial,
            f"{how}; rerun",
            result,
            outcome,
            silent=silent,
            lost=lost,
            unexpected=unexpected,
        )
    row.exit += f", rerun {rerun.code}"
    return row


def trial_disk_metrics(ctx):
    return _disk_case(ctx, "disk/metrics", "metrics")


def trial_disk_checkpoint(ctx):
    return _disk_case(ctx, "disk/checkpoint", "checkpoint")


# ----------------------------------------------------------------------------- 5: concurrent writer


def _wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """kill() returns before a busy process has stopped: wait until every
    thread is in state T, so no write of it lands after the snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = []
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:  # it exited, or a thread ended while listed
            return
        if all(state in "tT" for state in states):
            return
        time.sleep(0.01)


def trial_lock_concurrent(ctx):
    """A second run on a workdir in use is refused naming the holder; the
    first (paused with SIGSTOP meanwhile, as a slow run would be) goes on
    untouched to the reference's end."""
    trial, ref = "lock/concurrent", ctx.reference()
    workdir = ctx.workdir(trial)
    first = Job(ctx, workdir)
    when = _mid_training(first, workdir, ctx.rng(trial))
    first.signal(signal.SIGSTOP)
    try:
        _wait_stopped(first.pid)
        before = snapshot(workdir)
        second = ctx.run(workdir)
        touched = snapshot(workdir) != before
    finally:
        first.signal(signal.SIGCONT)
    done = first.finish()

    silent = audit(second, workdir, None)
    silent += [f"first run: {why}" for why in audit(done, workdir, ref)]
    lost = lost_results(workdir, ref) + (["the second run changed files"] if touched else [])
    unexpected = []
    expect(unexpected, f"in use by process {first.pid} on " in _message(second), "holder not named")
    expect(unexpected, done.code == 0, f"the first run exited {done.code}")
    row = error_row(
        trial,
        f"run A paused {when}; run B on the same workdir; A resumed",
        second,
        _ended(second, 2, "B refused")
        + ("; A ends at the reference" if done.code == 0 and not lost else f"; A exit {done.code}"),
        silent=silent,
        lost=lost,
        unexpected=unexpected,
    )
    row.exit += f", A {done.code}"
    return row


def trial_lock_stale(ctx):
    """A run SIGKILLed while holding the lock: the next one takes it over."""
    trial, ref = "lock/stale", ctx.reference()
    workdir = ctx.copy_of_reference(trial)
    lock = workdir / "ssl_jax.lock"
    job = Job(ctx, workdir)
    wait_until(job, lambda: f'"pid": {job.pid},' in lock.read_text(errors="replace"))
    job.signal(signal.SIGKILL)
    job.finish()
    before = snapshot(workdir)
    rerun = ctx.run(workdir)
    silent = audit(rerun, workdir, ref)
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    unexpected = []
    taken = f"Taking over the lock of process {job.pid}" in rerun.stderr
    expect(unexpected, taken, "no notice of the takeover")
    expect(unexpected, rerun.code == 0, f"the rerun exited {rerun.code}")
    return Row(
        trial,
        "SIGKILL right after the lock was taken; rerun",
        f"-9, rerun {rerun.code}",
        _message(rerun),
        "stale lock taken over, run completed" if taken and rerun.code == 0 else "?",
        lost,
        silent,
        unexpected,
        reported=False,
    )


# ----------------------------------------------------------------------------- 6: changed config

_IDENTITY_CHANGES = {
    "seed": "1",
    "batch_size": "8",
    "optimizer.learning_rate": "0.05",
    "train_steps": "50",
    "model": "convnet",
}


def _refused_case(ctx: Context, field: str) -> Row:
    """A change to what the run computes, on resume: refused in one line
    naming the field; no file of the workdir changes (config.json included)."""
    trial = f"config/{field}"
    workdir = ctx.copy_of_reference(trial)
    before = snapshot(workdir)
    value = _IDENTITY_CHANGES[field]
    result = ctx.run(workdir, f"--config.{field}={value}")
    silent, unexpected = audit(result, workdir, None), []
    lost = [] if snapshot(workdir) == before else ["files of the workdir changed"]
    if result.code == 0:  # two runs' results mixed in one workdir
        silent.append("a changed run accepted without --allow_config_change")
    line = _message(result)
    expect(unexpected, f"{field} " in line and value in line, "the line does not name the field")
    expect(unexpected, "--allow_config_change" in line, "the line does not name the way out")
    return error_row(
        trial,
        f"resume with --config.{field}={value}",
        result,
        _ended(result, 2, "refused; no file changed" if not lost else "refused; files changed"),
        silent=silent,
        lost=lost,
        unexpected=unexpected,
    )


def _refused(field):
    return lambda ctx: _refused_case(ctx, field)


def trial_config_neutral(ctx):
    """A field that cannot change the result (the probe's steps) may change."""
    trial, ref = "config/neutral", ctx.reference()
    workdir = ctx.copy_of_reference(trial)
    before = snapshot(workdir)
    result = ctx.run(workdir, "--config.probe.steps=30")
    silent = audit(result, workdir, ref)
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    unexpected = []
    expect(unexpected, result.code == 0, f"exit {result.code}")
    saved = json.loads((workdir / "config.json").read_text())
    expect(unexpected, saved["probe"]["steps"] == 30, "config.json does not hold the new value")
    recorded = (workdir / "config_history.jsonl").exists()
    history = "recorded as a change" if recorded else "config.json updated, no history entry"
    expect(unexpected, not recorded, "recorded as a change")
    return Row(
        trial,
        "resume with --config.probe.steps=30",
        str(result.code),
        _message(result),
        _ended(result, 0, f"accepted; {history}"),
        lost,
        silent,
        unexpected,
        reported=False,
    )


def trial_config_allowed(ctx):
    """An identity change asked for explicitly goes through and is recorded."""
    trial, ref = "config/allowed", ctx.reference()
    workdir = ctx.copy_of_reference(trial)
    before = snapshot(workdir)
    result = ctx.run(workdir, "--config.train_steps=50", "--allow_config_change")
    silent = audit(result, workdir, None, steps=50)
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref, same_end=False)
    unexpected = []
    expect(unexpected, result.code == 0, f"exit {result.code}")
    history = workdir / "config_history.jsonl"
    entries = (
        [json.loads(line) for line in history.read_text().splitlines()] if history.exists() else []
    )
    wanted = {"from_step": STEPS, "changes": {"train_steps": [STEPS, 50]}}
    got = [{k: e.get(k) for k in wanted} for e in entries]
    expect(unexpected, got == [wanted], f"config_history.jsonl holds {got}")
    expect(unexpected, resumed_from(result.stderr) == STEPS, f"did not resume from {STEPS}")
    return Row(
        trial,
        "resume with --config.train_steps=50 --allow_config_change",
        str(result.code),
        _message(result),
        _ended(
            result,
            0,
            f"accepted; trained {STEPS + 1}-50; " + ("recorded" if got else "not recorded"),
        ),
        lost,
        silent,
        unexpected,
        reported=False,
    )


# ----------------------------------------------------------------------------- 7: metrics.jsonl


def _metrics_case(ctx: Context, trial: str, garble: Callable) -> Row:
    """A workdir as a kill during step 36 leaves it (checkpoints up to 35, no
    results.json), its metrics.jsonl garbled: the rerun resumes with one
    warning and logs every step once."""
    ref = ctx.reference()
    workdir = ctx.copy_of_reference(trial)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    (workdir / "results.json").unlink()
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    new_lines, what = garble(lines[: STEPS - CHECKPOINT_EVERY + 1], ctx.rng(trial))
    path.write_text("".join(new_lines))
    before = snapshot(workdir)
    rerun = ctx.run(workdir)

    silent = audit(rerun, workdir, ref)
    lost = lost_checkpoints(before, workdir) + lost_results(workdir, ref)
    warnings = [line for line in rerun.stderr.splitlines() if "Ignoring line" in line]
    unexpected = []
    expect(unexpected, rerun.code == 0, f"exit {rerun.code}")
    expect(unexpected, len(warnings) == 1, f"{len(warnings)} warning lines, not 1")
    resumed = resumed_from(rerun.stderr)
    expect(unexpected, resumed == STEPS - CHECKPOINT_EVERY, f"resumed from {resumed}")
    outcome = f"resumed from step {resumed} with a warning"
    if rerun.code == 0 and not lost and not silent:
        outcome += "; every step once, exact"
    return Row(
        trial,
        what + "; rerun",
        str(rerun.code),
        warnings[0].split("] ", 1)[-1] if warnings else _message(rerun),
        outcome,
        lost,
        silent,
        unexpected,
        reported=False,
    )


def _truncated_last(lines, rng):
    last = lines[-1]
    return lines[:-1] + [last[: len(last) // 2]], f"line {len(lines)} cut in half (the last)"


def _garbage_inside(lines, rng):
    at = rng.randint(5, len(lines) - 5)
    garbage = "\x00\x00{garbage, not JSON\n"
    return lines[:at] + [garbage] + lines[at:], f"a garbage line inserted as line {at + 1}"


def trial_metrics_truncated(ctx):
    return _metrics_case(ctx, "metrics/truncated", _truncated_last)


def trial_metrics_garbage(ctx):
    return _metrics_case(ctx, "metrics/garbage", _garbage_inside)


# ----------------------------------------------------------------------------- 8: non-finite


def unusable_checkpoints(workdir: pathlib.Path) -> list[str]:
    """Checkpoints that cannot be read or hold NaN/Inf, each restored as
    saved (no target structure needed)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np  # here: the other trials need no JAX in this process
    import orbax.checkpoint as ocp
    from jax import tree_util

    bad = []
    for step in checkpoint_steps(workdir):
        try:
            with warnings.catch_warnings():  # "sharding info not provided": none is needed
                warnings.simplefilter("ignore")
                path = workdir / "checkpoints" / str(step) / "state"
                state = ocp.PyTreeCheckpointer().restore(path)
            values = [np.asarray(x) for x in tree_util.tree_leaves(state)]
        except Exception as error:  # orbax raises many types; any means unusable
            bad.append(f"checkpoint {step} unreadable ({type(error).__name__})")
            continue
        if not all(np.isfinite(v).all() for v in values if np.issubdtype(v.dtype, np.inexact)):
            bad.append(f"checkpoint {step} holds NaN/Inf")
    return bad


def _nonfinite_case(ctx: Context, trial: str, workdir: pathlib.Path, *overrides: str) -> Row:
    """A learning rate of 1e41 (inf in float32): the run fails (exit 2, never
    0), its line names a checkpoint that is truly good (or says none was
    saved), and no checkpoint holds NaN."""
    result = ctx.run(workdir, "--config.optimizer.learning_rate=1e41", *overrides)
    silent = audit(result, workdir, None)
    if result.code == 0:
        silent.append("a diverged run exited 0")
    lost = unusable_checkpoints(workdir)
    line, unexpected = _message(result), []
    named = re.search(r"last good checkpoint is step (\d+)", line)
    if named:
        saved = checkpoint_steps(workdir)
        expect(unexpected, int(named[1]) in saved, f"step {named[1]} is not among {saved}")
    else:
        expect(unexpected, "no checkpoint was saved yet" in line, "no checkpoint named")
        expect(unexpected, not checkpoint_steps(workdir), "a checkpoint exists after all")
    expect(unexpected, not (workdir / "results.json").exists(), "results.json written")
    good = f"names checkpoint {named[1]}, which verifies" if named else "says none was saved"
    shown = ", ".join(o.removeprefix("--config.").removeprefix("--") for o in overrides)
    return error_row(
        trial,
        f"learning_rate=1e41, {shown}",
        result,
        _ended(result, 2, f"failed; {good}") + ("; no NaN checkpoint" if not lost else ""),
        silent=silent,
        lost=lost,
        unexpected=unexpected,
    )


def trial_nonfinite_stop(ctx):
    # Step 1 already overflows: nothing good to save.
    trial = "nonfinite/stop"
    return _nonfinite_case(ctx, trial, ctx.workdir(trial), "--config.nonfinite=stop")


def trial_nonfinite_resumed(ctx):
    """The learning rate raised on resume (a run killed after checkpoint 35):
    the good checkpoints stay, and the line names the last of them."""
    trial = "nonfinite/resumed"
    workdir = ctx.copy_of_reference(trial)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    (workdir / "results.json").unlink()
    return _nonfinite_case(ctx, trial, workdir, "--config.nonfinite=stop", "--allow_config_change")


def trial_nonfinite_skip(ctx):
    trial = "nonfinite/skip"
    return _nonfinite_case(ctx, trial, ctx.workdir(trial), "--config.nonfinite=skip")


# ----------------------------------------------------------------------------- main

TRIALS: dict[str, Callable[[Context], Row]] = {
    "kill/training": trial_kill_training,
    "kill/save": trial_kill_save,
    "kill/probe": trial_kill_probe,
    "signal/SIGTERM": trial_signal_sigterm,
    "signal/SIGINT": trial_signal_sigint,
    "corrupt/flip": trial_corrupt_flip,
    "corrupt/delete": trial_corrupt_delete,
    "corrupt/truncate": trial_corrupt_truncate,
    "corrupt/only": trial_corrupt_only,
    "disk/metrics": trial_disk_metrics,
    "disk/checkpoint": trial_disk_checkpoint,
    "lock/concurrent": trial_lock_concurrent,
    "lock/stale": trial_lock_stale,
    **{f"config/{field}": _refused(field) for field in _IDENTITY_CHANGES},
    "config/neutral": trial_config_neutral,
    "config/allowed": trial_config_allowed,
    "metrics/truncated": trial_metrics_truncated,
    "metrics/garbage": trial_metrics_garbage,
    "nonfinite/stop": trial_nonfinite_stop,
    "nonfinite/resumed": trial_nonfinite_resumed,
    "nonfinite/skip": trial_nonfinite_skip,
}


def select(spec: str) -> list[str]:
    """`kill,config/seed` -> every kill trial and the seed one, in table order."""
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if not any(n == w or n.startswith(w + "/") for n in TRIALS)]
    if unknown:
        groups = sorted({n.split("/")[0] for n in TRIALS})
        raise SystemExit(f"unknown trial(s) {unknown}; groups: {groups}, or group/name")
    return [n for n in TRIALS if any(n == w or n.startswith(w + "/") for w in wanted)]


def _cell(text: str, out: pathlib.Path, width: int) -> str:
    # A trial's workdir (and what is under it) is WORKDIR: the paths are noise here.
    text = re.sub(rf"{re.escape(str(out))}/[^/\s:;,]+", "WORKDIR", text)
    text = text.replace(str(out), "$OUT").replace("|", "/").removeprefix("ssl_jax: ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[Row], out: pathlib.Path) -> str:
    def verdict(problems):
        return "no" if not problems else "YES"

    lines = [
        "| trial | what was done | exit | message | outcome | lost | silent | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            r.trial,
            _cell(r.done, out, 90),
            r.exit,
            _cell(r.message, out, 120) or "-",
            _cell(r.outcome, out, 80),
            verdict(r.lost),
            verdict(r.silent),
            "yes" if not r.unexpected else "NO",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", help="An empty (or new) scratch directory; default: a new temp dir."
    )
    parser.add_argument("--config", default="configs/rotation.py:runlocal")
    parser.add_argument(
        "--trials", default="", help="Comma list of groups or group/name; all if empty."
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seeds the kill moments and flipped bytes."
    )
    parser.add_argument(
        "--full_disk",
        choices=("auto", "tmpfs", "rlimit"),
        default="auto",
        help="How to fill a disk.",
    )
    args = parser.parse_args(argv)

    names = select(args.trials) if args.trials else list(TRIALS)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="ssl_jax_faults_")).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out={out} is not empty: its old workdirs would be resumed.")
    (out / "logs").mkdir(parents=True)
    tmpfs = args.full_disk == "tmpfs" or (args.full_disk == "auto" and _can_mount())
    ctx = Context(out, args.config, args.seed, tmpfs)

    started, rows = time.time(), []
    try:
        for name in names:
            print(f"[{time.time() - started:6.1f} s] {name}", file=sys.stderr, flush=True)
            rows.append(TRIALS[name](ctx))
    finally:
        for process in list(Job.live):  # only our own children, by pid
            process.kill()
            process.wait()
    wall = time.time() - started

    print(f"Fault injection: {args.config}, {STEPS} steps, a checkpoint every {CHECKPOINT_EVERY}")
    print(f"(full disk: {'tmpfs' if ctx.tmpfs else 'RLIMIT_FSIZE'}; $OUT = {out})\n")
    print(table(rows, out))
    notes = [
        f"- {r.trial}: {kind}: {'; '.join(problems)}"
        for r in rows
        for kind, problems in (("lost", r.lost), ("silent", r.silent), ("not ok", r.unexpected))
        if problems
    ]
    if notes:
        print("\n" + "\n".join(notes))
    silent = sum(bool(r.silent) for r in rows)
    lost = sum(bool(r.lost) for r in rows)
    not_ok = sum(bool(r.unexpected) for r in rows)
    print(
        f"\n{len(rows)} trials run; {sum(r.reported for r in rows)} failures reported as such "
        f"(one line, exit 2/130/143); {silent} silent failures; {lost} lost anything; "
        f"{not_ok} not as promised; {wall:.0f} s."
    )
    return 1 if silent or lost or not_ok else 0


if __name__ == "__main__":
    sys.exit(main())
