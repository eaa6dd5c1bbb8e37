"""A fork server for the suite's `python -m MODULE ...` and `python SCRIPT ...` runs.

About a hundred tests run `python -m ssl_jax.main` (or a script) in a fresh
interpreter, and each spends 1-2 s of its few seconds importing jax, flax,
optax, orbax and ssl_jax before doing anything. Here one server per pytest
process imports those once, without starting a JAX backend, and forks a child
per command. The child takes the command's working directory, environment,
argv and output files, and runs the module or script through `runpy` as
`__main__`, exactly as `python -m`/`python SCRIPT` would: its backend starts
after the fork (so XLA_FLAGS, the device count, apply per command), and it
exits through the interpreter's normal shutdown (atexit handlers, non-daemon
threads, flushed output), printing a traceback and exiting 1 on an uncaught
error.

What a fork cannot change falls back to `subprocess.run`: interpreter options
other than `-m` and `-c`, an environment whose JAX_* or PYTHON* variables
differ from the server's (JAX reads them once, at import), or a PYTHONPATH
that adds more than the tree ssl_jax is imported from.
`SSL_JAX_TEST_FORKSERVER=0` turns the server off (every command a subprocess),
to check that nothing depends on it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading

OFF = os.environ.get("SSL_JAX_TEST_FORKSERVER", "1") == "0"

# What `python -m ssl_jax.main` imports before it does any work; the server
# keeps the third-party modules they pull in (jax, flax, optax, orbax, ...)
# and forgets ssl_jax's own (see _serve).
_WARM = (
    "absl.app",
    "ml_collections.config_flags",
    "ssl_jax.cli",
    "ssl_jax.experiment",
    "ssl_jax.distributed",
    "ssl_jax.preemption",
    "ssl_jax.checkpoint",
    "ssl_jax.data.datasets",
    "ssl_jax.export",
    "ssl_jax.nonfinite",
    "ssl_jax.registry",
    "ssl_jax.workdir",
)


def _startup_keys(env: dict[str, str]) -> dict[str, str]:
    """The variables an interpreter reads at start-up or import (PYTHONPATH
    apart): a command that sets them otherwise than the server runs as a
    subprocess."""
    return {
        k: v
        for k, v in env.items()
        if k.startswith(("JAX_", "PYTHON")) and k != "PYTHONPATH" or k == "SSL_JAX_XLA_CPU_DEFAULTS"
    }


def _python_path(env: dict[str, str]) -> list[str]:
    return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _tree() -> str:
    """The folder the suite's (and so the server's) ssl_jax is imported from."""
    import ssl_jax

    return os.path.dirname(os.path.dirname(os.path.abspath(ssl_jax.__file__)))


class _Server:
    def __init__(self):
        self.env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        self.lock = threading.Lock()
        atexit.register(self.close)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def accepts(self, env: dict[str, str]) -> bool:
        """A PYTHONPATH may add the tree the server's ssl_jax comes from (the
        child puts it on sys.path as python would); anything else it adds
        could shadow a module the server has imported."""
        added = set(_python_path(env)) - set(_python_path(self.env))
        return (
            self.process.poll() is None
            and _startup_keys(env) == _startup_keys(self.env)
            and added <= {_tree()}
        )

    def run(self, kind, target, args, cwd, env, timeout):
        with self.lock, tempfile.TemporaryDirectory(prefix="forkserver_") as folder:
            out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
            request = {
                "kind": kind,
                "target": target,
                "args": args,
                "cwd": os.fspath(cwd),
                "env": env,
                "stdout": out,
                "stderr": err,
            }
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = json.loads(self.process.stdout.readline())["pid"]
            expired = threading.Event()

            def expire():
                expired.set()
                os.kill(pid, 9)

            timer = threading.Timer(timeout, expire) if timeout else None
            if timer:
                timer.start()
            reply = self.process.stdout.readline()
            if timer:
                timer.cancel()
            if not reply:
                raise RuntimeError("the test fork server died")
            returncode = json.loads(reply)["returncode"]
            with open(out) as f_out, open(err) as f_err:
                stdout, stderr = f_out.read(), f_err.read()
        if expired.is_set():
            raise subprocess.TimeoutExpired(
                [sys.executable, target, *args], timeout, stdout, stderr
            )
        return returncode, stdout, stderr


_server: _Server | None = None


def _command(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, target, args) for `python -m M ...`, `python -c CODE ...` and
    `python S.py ...`."""
    argv = [os.fspath(a) for a in argv]
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] in ("-m", "-c") and len(argv) > 2:
        return {"-m": "module", "-c": "code"}[argv[1]], argv[2], argv[3:]
    if argv[1].endswith(".py"):
        return "script", argv[1], argv[2:]
    return None


def run(argv, *, cwd=None, env=None, timeout=None, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, capture_output=True, text=True, ...)`, forked from
    the server where the command allows it."""
    global _server
    env = dict(os.environ if env is None else env)
    command = _command(argv)
    plain = {"capture_output": True, "text": True}
    if OFF or command is None or kwargs != plain:
        return subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, **kwargs)
    if _server is None:
        _server = _Server()
    if not _server.accepts(env):
        return subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, **kwargs)
    returncode, stdout, stderr = _server.run(*command, cwd or os.getcwd(), env, timeout)
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


# ----------------------------------------------------------------------------- the server


def _serve() -> None:
    import importlib

    for name in _WARM:
        importlib.import_module(name)
    # Keep what ssl_jax imports warm, but not ssl_jax itself: its import sets
    # XLA flags (cpu_flags) from the environment of that moment, so each
    # command imports it afresh, when and where a fresh interpreter would.
    for name in [m for m in sys.modules if m == "ssl_jax" or m.startswith("ssl_jax.")]:
        del sys.modules[name]
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints cannot reach the protocol
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            _become(request)
            # The command ran to its end: leave as the interpreter would.
            raise SystemExit(0)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _become(request: dict) -> None:
    """In the child: take the command's stdio, directory and environment, and
    run it as __main__. Its SystemExit or error leaves the server's loop and
    ends the child as it would end `python`."""
    import runpy
    import types

    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = open(0, closefd=False)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # Python puts PYTHONPATH's entries right after sys.path[0].
    sys.path[1:1] = [p for p in _python_path(os.environ) if p not in sys.path]
    target, args = request["target"], request["args"]
    if request["kind"] == "module":
        sys.path[0] = os.getcwd()
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif request["kind"] == "code":
        sys.path[0] = ""
        sys.argv = ["-c", *args]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
