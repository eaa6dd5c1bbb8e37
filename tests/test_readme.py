"""Every block of README.md that is meant to run, run as written, with tiny settings.

The convention (stated in the README's Tests section too):
- Every fenced ```bash and ```python block of README.md runs, unless the line
  just before its opening fence is `<!-- not run: REASON -->` (the reason is
  required; such a block is reported as skipped, with it).
- Inside a bash block, commands that start with `pip` (installing) or
  `pytest` (the test suite itself) are skipped.

The substitutions, so that each block runs in seconds on a CPU and writes
nothing outside a temporary folder:
- every command runs in one temporary folder (shared by all blocks) that
  links `configs/` and `experiments/` to the repository's, so relative
  workdirs and outputs (`runs/...`, `simclr.safetensors`) land there;
- `--config=configs/X.py[:options]`, and the launchers' `--arg=options`
  (given, or added beside `--configs=`), get `runlocal` among the options (a
  tiny model, 6 steps);
- `train_steps` and `supervised_steps` given as `--config.` or `--set=`
  become 6, `--config.input.workers` 1;
- absolute paths (`/data/...`, `/tmp/...`) and `$DATA` point into the
  temporary folder; an `imagefolder:` path there is a tiny image folder the
  test writes;
- `python` is this interpreter; `sbatch` is a stand-in that records the job
  and prints a job id.
A command whose arguments equal an earlier one's apart from its workdir
reuses that workdir (the quick start's run and the Configs smoke run are one
training; the second just re-evaluates). The blocks in `FAST` run in the fast
suite; the others are marked slow.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests import forkserver

ROOT = pathlib.Path(__file__).parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"

# Blocks of the fast suite, by `<heading slug>-<n>` (the n-th runnable or not
# block under that heading). Together about a minute on 2 CPU cores.
FAST = {
    "quick-start-1",
    "configs-1",
    "python-api-1",
    "experiments-sweeps-slurm-the-task-comparison-peers-2",
}
SMALL_STEPS = 6
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.*?)\s*-->")
SKIPPED_PROGRAMS = ("pip", "pytest")


@dataclasses.dataclass
class Block:
    id: str
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None  # the reason, or None: it runs


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def parse_blocks(text: str) -> list[Block]:
    blocks, heading, counts = [], "", {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"README.md line {i + 1}: a fence is never closed"
            language = fence.group(1)
            if language in ("bash", "python"):
                key = slug(heading)
                counts[key] = counts.get(key, 0) + 1
                before = lines[i - 1].strip() if i else ""
                marker = NOT_RUN.search(before)
                claims = before.startswith("<!--") and "not run" in before
                if claims and not (marker and marker["reason"]):
                    raise AssertionError(
                        f"README.md line {i}: write `<!-- not run: REASON -->`, with a reason"
                    )
                blocks.append(
                    Block(
                        id=f"{key}-{counts[key]}",
                        language=language,
                        code="\n".join(lines[i + 1 : end]),
                        line=i + 1,
                        not_run=marker["reason"] if marker else None,
                    )
                )
            i = end + 1
            continue
        if line.startswith("#"):
            heading = line.lstrip("#")
        i += 1
    return blocks


BLOCKS = parse_blocks(README.read_text())


def bash_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments
    dropped, `pip` and `pytest` lines skipped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] not in SKIPPED_PROGRAMS:
            commands.append(argv)
    return commands


class Sandbox:
    """The temporary folder every block runs in, and the substitutions."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        for name in ("configs", "experiments"):
            (root / name).symlink_to(ROOT / name)
        self.bin = root / "bin"
        self.bin.mkdir()
        sbatch = self.bin / "sbatch"
        sbatch.write_text(
            f"#!{sys.executable}\n"
            "import pathlib, shutil, sys\n"
            f"shutil.copy(sys.argv[-1], pathlib.Path({str(root)!r}) / 'sbatch_script.sh')\n"
            "print('Submitted batch job 12345')\n"
        )
        sbatch.chmod(0o755)
        self.variables = {"DATA": str(root / "abs" / "data")}
        self.workdirs: dict[tuple[str, ...], str] = {}
        self.env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "SSL_JAX_CACHE_DIR": str(root / "cache"),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            **self.variables,
        }

    def substitute(self, arg: str) -> str:
        def variable(match):
            name = match[1] or match[2]
            assert name in self.variables, f"the README uses ${name}: give it a value here"
            return self.variables[name]

        arg = re.sub(r"\$(?:(\w+)|\{(\w+)\})", variable, arg)
        # Absolute paths after `=` or `:` (or alone) move into the sandbox.
        arg = re.sub(r"(^|[=:])(/(?:data|tmp)\b)", rf"\g<1>{self.root}/abs\g<2>", arg)
        if arg.startswith("--config=configs/"):
            config, _, options = arg.partition(":")
            arg = f"{config}:{with_runlocal(options)}"
        if arg.startswith("--arg="):
            arg = f"--arg={with_runlocal(arg.removeprefix('--arg='))}"
        arg = re.sub(
            r"^(--config\.|--set=)((?:[\w.]*\.)?(?:train_steps|supervised_steps))=\d+$",
            rf"\g<1>\g<2>={SMALL_STEPS}",
            arg,
        )
        arg = re.sub(r"^--config\.input\.workers=\d+$", "--config.input.workers=1", arg)
        for folder in re.findall(r"imagefolder:([^,\s]+)", arg):
            write_image_folder(pathlib.Path(folder))
        return arg

    def command(self, argv: list[str]) -> list[str]:
        if any(a.startswith("--configs=") for a in argv) and not any(
            a.startswith("--arg=") for a in argv
        ):
            argv = [*argv, "--arg="]  # the launchers' config options: runlocal below
        argv = [self.substitute(a) for a in argv]
        if argv[0] == "python":
            argv[0] = sys.executable
        # The same command apart from its workdir: the same workdir (one training).
        workdir = next((a for a in argv if a.startswith("--workdir=")), None)
        if workdir is not None and "ssl_jax.main" in argv:
            key = tuple(a for a in argv if a != workdir)
            shared = self.workdirs.setdefault(key, workdir)
            argv = [shared if a == workdir else a for a in argv]
        return argv

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return forkserver.run(
            argv,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            **kwargs,
        )


def with_runlocal(options: str) -> str:
    """A config's comma-separated options with `runlocal` among them."""
    if "runlocal" in options.split(","):
        return options
    return f"{options},runlocal" if options else "runlocal"


def write_image_folder(root: pathlib.Path, classes: int = 3, train: int = 12, test: int = 4):
    """A tiny image folder: `classes` classes of 16 px PNGs, one colour each."""
    from PIL import Image

    if root.exists():
        return
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for k in range(count):
                image = rng.integers(0, 64, (16, 16, 3), dtype=np.uint8)
                image[..., c] += 128
                Image.fromarray(image).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("readme"))


def _params():
    for block in BLOCKS:
        marks = []
        if block.not_run is not None:
            marks.append(pytest.mark.skip(reason=f"README: not run: {block.not_run}"))
        elif block.id not in FAST:
            marks.append(pytest.mark.slow)
        yield pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", list(_params()))
def test_readme_block_runs(block, sandbox):
    where = f"README.md line {block.line} ({block.id})"
    if block.language == "python":
        script = sandbox.root / f"readme_{block.id}.py"
        script.write_text(block.code + "\n")
        result = sandbox.run([sys.executable, str(script)])
        assert result.returncode == 0, f"{where} failed:\n{result.stderr[-4000:]}"
        return
    commands = bash_commands(block.code)
    assert commands, f"{where} has nothing to run: mark it `<!-- not run: REASON -->`"
    for argv in commands:
        command = sandbox.command(argv)
        result = sandbox.run(command)
        assert result.returncode == 0, (
            f"{where}: `{shlex.join(argv)}` failed ({result.returncode}) as\n"
            f"{shlex.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )


def test_the_fast_blocks_exist_and_run():
    """A renamed heading would silently move its blocks to the slow suite."""
    runnable = {b.id for b in BLOCKS if b.not_run is None}
    assert FAST <= runnable, f"not runnable blocks of README.md: {sorted(FAST - runnable)}"


def test_the_readme_keeps_its_quick_start():
    quick = next(b for b in BLOCKS if b.id == "quick-start-1")
    assert quick.not_run is None
    assert [a[:2] for a in bash_commands(quick.code)] == [["python", "-m"]]
    assert any(line.startswith("pip install") for line in quick.code.splitlines())
    assert any(line.startswith("pytest") for line in quick.code.splitlines())


@pytest.mark.parametrize("path", [README, RESULTS], ids=lambda p: p.name)
def test_links_and_images_resolve(path):
    """Every `[..](#anchor)`, relative link and image of the README and of
    docs/results.md points at a heading or a file that exists."""
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        document = (path.parent / file).resolve() if file else path
        if not document.exists():
            broken.append(target)
            continue
        if anchor and document.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", document.read_text(), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{path.name}: links to nothing: {broken}"
