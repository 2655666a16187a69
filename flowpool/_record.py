"""Immutable slotted records without ``dataclasses``.

``@record`` makes a class what ``@dataclass(frozen=True, slots=True)`` made it,
from the same class body (annotated fields, defaults, ``field(...)``,
``__post_init__``): slots, ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__match_args__``, pickling, and assignment raising
``dataclasses.FrozenInstanceError``. It exists for start-up time: importing
``dataclasses`` pulls in ``inspect`` (ast, dis, tokenize), and each decorated
class compiles half a dozen generated methods, which together cost a plain
``import flowpool`` and one run about a third of its time.

Only ``__init__`` is generated from source (one ``exec`` per class), and only
when the class does not write its own: records built on hot paths (one per
step, one per event) write ``__init__`` by hand, which ``@record`` checks
against the fields, so that the two cannot drift apart. Everything else is
shared, generic code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

__all__ = ["Field", "field", "fields", "record", "replace"]

T = TypeVar("T")

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()


class Field:
    """One field of a record (``fields(cls)``): what ``dataclasses.Field`` told its users."""

    __slots__ = ("compare", "default", "default_factory", "metadata", "name", "repr")

    def __init__(
        self,
        default: Any,
        default_factory: Callable[[], Any] | None,
        repr: bool,  # the name dataclasses gave it
        compare: bool,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        if default is not _MISSING and default_factory is not None:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare
        self.metadata: Mapping[str, Any] = {} if metadata is None else metadata

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    repr: bool = True,  # the name dataclasses gave it
    compare: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """A field with options, as ``dataclasses.field`` (typed ``Any`` for the same reason)."""
    return Field(default, default_factory, repr, compare, metadata)


def fields(cls: type | object) -> tuple[Field, ...]:
    """The record's fields in declaration order."""
    declared: tuple[Field, ...] | None = getattr(cls, "__record_fields__", None)
    if declared is None:
        raise TypeError("must be called with a record type or instance")
    return declared


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` (as ``dataclasses.replace``)."""
    for spec in fields(obj):
        changes.setdefault(spec.name, getattr(obj, spec.name))
    return type(obj)(**changes)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` an immutable slotted record (see the module docstring)."""
    specs: list[Field] = []
    namespace = dict(vars(cls))
    for name, annotation in namespace.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        declared = namespace.pop(name, _MISSING)
        spec = declared if isinstance(declared, Field) else Field(declared, None, True, True, None)
        spec.name = name
        specs.append(spec)
    names = tuple(spec.name for spec in specs)
    for base in cls.__mro__[1:]:
        if hasattr(base, "__record_fields__"):
            raise TypeError(f"{cls.__qualname__}: a record cannot extend another record")
    seen_default = False
    for spec in specs:
        if spec.required and seen_default:
            raise TypeError(f"{cls.__qualname__}: non-default field {spec.name!r} follows a field with a default")
        seen_default = seen_default or not spec.required
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = names
    namespace["__record_fields__"] = tuple(specs)
    namespace["__match_args__"] = names
    compared = tuple(spec.name for spec in specs if spec.compare)
    namespace["_record_key"] = staticmethod(_tuple_getter(compared))
    namespace["_record_shown"] = tuple(spec.name for spec in specs if spec.repr)
    if "__init__" in namespace:
        _check_written_init(cls.__qualname__, namespace["__init__"], specs)
    else:
        namespace["__init__"] = _generated_init(cls, specs, "__post_init__" in namespace)
    for method_name, method in _SHARED.items():
        namespace.setdefault(method_name, method)
    # As dataclass(frozen=True): hashed by the compared fields unless the class says otherwise.
    if "__hash__" not in namespace or (namespace["__hash__"] is None and "__eq__" in vars(cls)):
        namespace["__hash__"] = _hash
    made: type[T] = type(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = cls.__qualname__
    return made


def _tuple_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:
        single = attrgetter(names[0])
        return lambda obj: (single(obj),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


def _check_written_init(owner: str, init: Any, specs: list[Field]) -> None:
    """A hand-written ``__init__`` takes the fields, in order, with their defaults."""
    code = init.__code__
    parameters = code.co_varnames[1 : code.co_argcount]
    defaults = init.__defaults__ or ()
    expected = tuple(spec.name for spec in specs)
    if parameters != expected:
        raise TypeError(f"{owner}.__init__ takes {parameters}, but the fields are {expected}")
    offset = len(specs) - len(defaults)
    for position, spec in enumerate(specs):
        given = defaults[position - offset] if position >= offset else _MISSING
        same = spec.default is _MISSING or given is spec.default
        same = same or (type(given) is type(spec.default) and given == spec.default)
        if spec.required != (given is _MISSING) or not same:
            raise TypeError(f"{owner}.__init__: the default of {spec.name!r} is not the field's")


def _generated_init(cls: type, specs: list[Field], post_init: bool) -> Any:
    scope: dict[str, Any] = {"_set": object.__setattr__, "_MISSING": _MISSING}
    parameters = []
    body = []
    for spec in specs:
        if spec.default_factory is not None:
            scope[f"_factory_{spec.name}"] = spec.default_factory
            parameters.append(f"{spec.name}=_MISSING")
            given = f"_factory_{spec.name}() if {spec.name} is _MISSING else {spec.name}"
            body.append(f"_set(self, {spec.name!r}, {given})")
            continue
        if spec.required:
            parameters.append(spec.name)
        else:
            scope[f"_default_{spec.name}"] = spec.default
            parameters.append(f"{spec.name}=_default_{spec.name}")
        body.append(f"_set(self, {spec.name!r}, {spec.name})")
    if post_init:
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(parameters)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, scope)  # the dataclass way: source built from field names only
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


# The methods every record shares.


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._record_shown)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_key(self) == self._record_key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self._record_key(self))


def _frozen(name: str) -> AttributeError:
    import dataclasses  # only when someone tries: not importing it is what records are for

    return dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _setattr(self: Any, name: str, value: Any) -> None:
    raise _frozen(name)


def _delattr(self: Any, name: str) -> None:
    raise _frozen(name)


def _getstate(self: Any) -> list[Any]:
    return [getattr(self, spec.name) for spec in self.__record_fields__]


def _setstate(self: Any, state: list[Any]) -> None:
    # A pickle made before a field was added carries fewer values: the rest take their defaults.
    for position, spec in enumerate(self.__record_fields__):
        if position < len(state):
            value = state[position]
        elif spec.default_factory is not None:
            value = spec.default_factory()
        elif spec.required:
            raise TypeError(f"a pickled {type(self).__qualname__} lacks its field {spec.name!r}")
        else:
            value = spec.default
        object.__setattr__(self, spec.name, value)


_SHARED: dict[str, Callable[..., Any]] = {
    "__repr__": _repr,
    "__eq__": _eq,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__getstate__": _getstate,
    "__setstate__": _setstate,
}
