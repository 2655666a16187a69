"""Loading a TARGET (``path/to/file.py:NAME`` or ``package.module:NAME``) for the command,
with the target's own ``sys.argv`` (``flowpool run TARGET -- ARG...``).

Loading a target imports it, which executes its code: by design, as ``python
file.py`` would. Every failure becomes a one-line ``CliError``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any, NoReturn

import click

from flowpool import Flow, FlowDefinitionError

__all__ = ["CliError", "load_target", "script_argv"]


class CliError(click.ClickException):
    """A user-facing error: one line on stderr and exit status 2."""

    exit_code = 2  # EXIT_USAGE in cli: bad usage

    def __init__(self, message: str) -> None:
        # One line, whatever the user's exception put in its message.
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one-line message on stderr."""
        click.echo(f"flowpool: error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise CliError(message)


@contextlib.contextmanager
def script_argv(target: str, args: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` is the target's, as ``python file.py ARG...`` would set it, for the
    import and the run (worker processes take the parent's ``sys.argv`` with each
    attempt); restored afterwards (the command may be called in-process)."""
    saved_argv = sys.argv
    sys.argv = [target.rpartition(":")[0] or target, *args]
    try:
        yield
    finally:
        sys.argv = saved_argv


def _where(error: BaseException, prefer: Path | None) -> str:
    """``file:line`` where ``error`` was raised, preferring frames in ``prefer``."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen") and "importlib" not in Path(frame.filename).parts
    ]
    if prefer is not None:
        own = [frame for frame in frames if Path(frame.filename).resolve() == prefer]
        frames = own or frames
    if not frames:
        return "?"
    return f"{frames[-1].filename}:{frames[-1].lineno}"


def _summary(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg}"
    lines = traceback.format_exception_only(type(error), error)
    text = lines[0].strip() if lines else type(error).__name__
    return text or type(error).__name__


def _import_file(text: str) -> tuple[ModuleType, Path]:
    path = Path(text)
    if not path.is_file():
        _fail(f"no such file: {text}" if not path.exists() else f"not a file: {text}")
    path = path.resolve()
    # Like ``python file.py``: the file's directory comes first on sys.path, so its
    # sibling imports work and worker processes can import the module by name.
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file and Path(existing_file).resolve() == path:
            return existing, path
    by_value = existing is not None or not name.isidentifier()
    if by_value:
        # The name is taken (or unusable): load under a private name, whose functions
        # worker processes then receive by value instead of importing them.
        safe = re.sub(r"\W", "_", path.stem)
        name = f"_flowpool_target_{safe}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        _fail(f"cannot import {text}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as error:  # noqa: BLE001 - the user's file may raise anything, SystemExit included
        sys.modules.pop(name, None)
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, path)})")
    if by_value:
        try:
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except Exception:  # noqa: BLE001 - only process mode needs it; a run there will say what is wrong
            logging.getLogger("flowpool").debug("could not register %s for pickling by value", text)
    return module, path


def _import_module(text: str) -> tuple[ModuleType, Path | None]:
    # ``python -m`` puts the working directory first; ``flowpool`` as a script does not.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not all(part.isidentifier() for part in text.split(".")):
        _fail(f"{text!r} is neither an existing file nor a module name (package.module)")
    try:
        spec = importlib.util.find_spec(text)
    except ModuleNotFoundError:
        spec = None
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - a parent package's __init__ raised
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, None)})")
    if spec is None:
        hint = " (a file path needs to end in .py)" if "." not in text else ""
        _fail(f"no module named {text!r}{hint}")
    origin = Path(spec.origin).resolve() if spec.origin and spec.has_location else None
    try:
        module = importlib.import_module(text)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - the user's module may raise anything, SystemExit included
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, origin)})")
    return module, origin


def load_target(target: str) -> Flow:
    """Load the flow named by ``TARGET`` (``path/to/file.py:NAME`` or ``package.module:NAME``).

    ``NAME`` may be a ``Flow`` or a callable that returns one.

    Raises:
        CliError: the file or module is missing, importing it failed, the name is
            missing, or it is not a flow; the message is one line.
    """
    source, colon, name = target.rpartition(":")
    if not colon or not source or not name:
        _fail(f"TARGET {target!r} must look like path/to/file.py:NAME or package.module:NAME")
    is_file = source.endswith(".py") or "/" in source or os.sep in source or Path(source).is_file()
    module, path = _import_file(source) if is_file else _import_module(source)
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            flows = sorted(key for key, value in vars(module).items() if isinstance(value, Flow))
            hint = f" (flows in it: {', '.join(flows)})" if flows else ""
            _fail(f"{source} has no attribute {name!r}{hint}")
    if isinstance(obj, Flow):
        return obj
    if not callable(obj) or isinstance(obj, type):
        _fail(f"{name!r} in {source} is a {type(obj).__name__}, not a flowpool.Flow or a function returning one")
    try:
        made = obj()
    except KeyboardInterrupt:
        raise
    except FlowDefinitionError as error:
        _fail(f"{name}() built an invalid flow: {error}")
    except BaseException as error:  # noqa: BLE001 - the user's factory may raise anything
        _fail(f"calling {name}() from {source} failed: {_summary(error)} ({_where(error, path)})")
    if not isinstance(made, Flow):
        _fail(f"{name}() in {source} returned a {type(made).__name__}, not a flowpool.Flow")
    return made
