"""Run a function the learner wrote in a notebook cell in a new Python process.

Checks use it wherever the point is what survives a restart, or what state the
checker's own process must not share: a dict of idempotency keys kept in the kernel's
memory looks fine until the process restarts, so the restart check runs the learner's
handler in a fresh process each time, with nothing but its source and the names it uses.

:func:`run_fresh` sends the function's source (``inspect.getsource``), the sources of the
notebook functions and classes it calls, ``import`` lines for the modules and library
names it uses, and a pickled copy of any other global value it reads. The child process
runs it once and sends back the return value (pickled) or the exception, described as
one line that points into the learner's code. Module-level state is therefore a copy:
what the function changes in it is gone when the process ends, as after a restart.
"""

from __future__ import annotations
import __future__

import inspect
import linecache
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CELL_FILENAME = "<your cell>"  # the child compiles learner code under this name

# What the child runs: read the payload, define the learner's code in __main__ (so
# pickled classes resolve), call the function, pickle back value or error.
# The learner's source is compiled with annotations kept as text (as under `from
# __future__ import annotations`): a type hint may name things the code never uses.
_CHILD = r'''
import pickle, sys, traceback
payload_path, result_path = sys.argv[1], sys.argv[2]
with open(payload_path, "rb") as f:
    payload = pickle.load(f)
main = sys.modules["__main__"].__dict__
result = {}
try:
    from labsupport.fresh_process import rebuild
    fn = rebuild(payload, main)
    value = fn(*payload["args"], **payload["kwargs"])
    pickle.dumps(value)  # fail here, with a clear message, if it cannot be sent back
    result["value"] = value
except BaseException as exc:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename == payload["filename"]]
    where = ""
    if frames:
        f = frames[-1]
        line = payload["source"].splitlines()[f.lineno - 1].strip()
        where = f" (in {f.name}: {line})"
    result["error"] = f"{type(exc).__name__}: {exc}{where}"
with open(result_path, "wb") as f:
    pickle.dump(result, f)
'''


@dataclass(frozen=True)
class FreshResult:
    """What one call in a fresh process returned, or why it did not."""

    value: Any = None
    error: str | None = None  # one line: the exception and the learner's line, or a timeout
    output: str = ""  # what the function printed (stdout and stderr)

    @property
    def ok(self) -> bool:
        return self.error is None


class CannotSend(ValueError):
    """The function, or a name it uses, cannot be rebuilt in another process."""


def _names_used(code: types.CodeType) -> set[str]:
    """Global names a code object (and the functions and classes nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _source(obj: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise CannotSend(f"the source of {obj.__name__!r} cannot be read ({exc}); "
                         "define it with def/class in a notebook cell") from exc


def _collect(fn: Any, home: str, sources: dict[str, str], imports: dict[str, str],
             values: dict[str, Any]) -> None:
    """Fill sources/imports/values with what ``fn`` (defined in module ``home``) needs."""
    # Compile the whole definition, not only its body: decorators, base classes and
    # default values name things too (``class Reply(NamedTuple)``, ``@dataclass``).
    used = _names_used(compile(_source(fn), CELL_FILENAME, "exec"))
    namespace = fn.__globals__ if hasattr(fn, "__globals__") else sys.modules[fn.__module__].__dict__
    for name in sorted(used):
        if name in sources or name in imports or name in values or name not in namespace \
                or name == fn.__name__ or name.startswith("__"):
            continue  # already collected, a builtin, an attribute name, itself, or __name__
        obj = namespace[name]
        if isinstance(obj, types.ModuleType):
            imports[name] = f"import {obj.__name__} as {name}"
        elif isinstance(obj, (types.FunctionType, type)) and obj.__module__ == home:
            sources[name] = _source(obj)
            _collect(obj, home, sources, imports, values)
        elif hasattr(obj, "__module__") and hasattr(obj, "__qualname__") and obj.__module__ \
                and obj.__module__ != home and "." not in obj.__qualname__:
            imports[name] = f"from {obj.__module__} import {obj.__qualname__} as {name}"
        else:
            try:
                pickle.dumps(obj)
            except Exception as exc:  # noqa: BLE001 - any pickling failure means the same
                raise CannotSend(f"the global {name!r} ({type(obj).__name__}) cannot be sent "
                                 f"to a fresh process: {exc}") from exc
            values[name] = obj


def program(fn: Any) -> dict[str, Any]:
    """The payload a fresh process needs to rebuild ``fn``: sources, imports, values."""
    if not isinstance(fn, types.FunctionType):
        raise CannotSend(f"a function defined with def, got {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise CannotSend("a lambda's source cannot be sent on its own; use def")
    if fn.__closure__:
        raise CannotSend(f"{fn.__name__!r} is defined inside another function; define it at "
                         "the top level of a cell")
    sources: dict[str, str] = {}
    imports: dict[str, str] = {}
    values: dict[str, Any] = {}
    _collect(fn, fn.__module__, sources, imports, values)
    sources[fn.__name__] = _source(fn)  # last: after what it uses
    return {"name": fn.__name__, "source": "\n\n".join(sources.values()),
            "imports": list(imports.values()), "values": values}


def rebuild(payload: dict[str, Any], namespace: dict[str, Any] | None = None) -> Any:
    """The function a :func:`program` payload describes, defined again in ``namespace``
    (a new module namespace by default): what a process of its own serves."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for line in payload["imports"]:
        exec(line, namespace)
    namespace.update(payload["values"])
    filename = payload.get("filename", CELL_FILENAME)
    source = payload["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks
    exec(compile(source, filename, "exec", flags=__future__.annotations.compiler_flag), namespace)
    return namespace[payload["name"]]


def run_fresh(fn: Any, *args: Any, timeout: float = 60.0, **kwargs: Any) -> FreshResult:
    """Call ``fn(*args, **kwargs)`` in a new Python process and report what happened.

    Never raises for the learner's mistakes: an exception in ``fn``, a value that cannot
    be sent back, a name that cannot be sent, or running past ``timeout`` (seconds; the
    process is killed) all come back as ``FreshResult.error``.
    """
    try:
        payload = program(fn)
        payload |= {"filename": CELL_FILENAME, "args": args, "kwargs": kwargs}
        blob = pickle.dumps(payload)
    except CannotSend as exc:
        return FreshResult(error=f"CannotSend: {exc}")
    except Exception as exc:  # noqa: BLE001 - an argument that cannot be pickled
        return FreshResult(error=f"CannotSend: the arguments cannot be sent: {exc}")
    with tempfile.TemporaryDirectory(prefix="labsupport-fresh-") as tmp:
        payload_path, result_path = Path(tmp, "payload.pkl"), Path(tmp, "result.pkl")
        payload_path.write_bytes(blob)
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(payload_path),
                                   str(result_path)], capture_output=True, text=True,
                                  timeout=timeout, cwd=os.getcwd())
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(
                exc.stdout, bytes) else (exc.stdout or "")
            return FreshResult(error=f"TimeoutError: did not finish within {timeout:g} s",
                               output=output)
        output = proc.stdout + proc.stderr
        if not result_path.exists():  # the process died (os._exit, a signal, out of memory)
            return FreshResult(error=f"the process ended with exit code {proc.returncode} "
                                     "before returning", output=output)
        result = pickle.loads(result_path.read_bytes())
    return FreshResult(value=result.get("value"), error=result.get("error"), output=output)

