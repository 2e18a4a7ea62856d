"""How the models of ``_models`` map to JSON and back, strictly typed and round-trip exact.

A model lists its members as fields (``_req``, ``_opt``, ``_many``, ``_map``), each with a
parser that takes the raw JSON value and the member's path (for errors); ``_Model`` parses
with them, keeps unmodelled members in ``extra`` and remembers the document's shape
(explicit nulls, empty arrays, member order) so that ``to_json`` gives the document back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union, cast

from ._core.protocol import MAX_JSON_DEPTH, too_deep
from ._digest import Digest, _kind, _type_error
from ._errors import ConfigurationError

# --- parsing and dumping of JSON members ---------------------------------------------------
# A parser takes the raw JSON value and the member's path (for errors) and returns the
# Python value. Dumping needs no table: _dump turns any model value back into JSON.

_Parser = Callable[[Any, str], Any]


def _typed(kind: Any, expected: str, minimum: Optional[int] = None) -> _Parser:
    def parse(value: Any, path: str) -> Any:
        # JSON true is not a number, although bool is an int subclass.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise _type_error(path, expected, value)
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{path}: expected {expected}, got {value}")
        return value

    return parse


_str = _typed(str, "a string")
_int = _typed(int, "an integer")
_bool = _typed(bool, "a boolean")
_size = _typed(int, "a size >= 0", 0)
_layer_size = _typed(int, "a size >= 0 or -1 (unknown)", -1)


def _digest(value: Any, path: str) -> Digest:
    text = _str(value, path)
    try:
        return Digest.parse(text)
    except ConfigurationError as e:
        raise ConfigurationError(f"{path}: {e}") from None


def _array_of(item: _Parser) -> _Parser:
    def parse(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, "an array", value)
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return parse


_strs = _array_of(_str)
_digests = _array_of(_digest)


def _object(value: Any, path: str) -> dict[str, Any]:
    """Copies a JSON object with string keys; its values stay unchecked JSON."""
    if not isinstance(value, Mapping):
        raise _type_error(path, "an object", value)
    for key in value:
        if not isinstance(key, str):
            raise ConfigurationError(f"{path}: member names must be strings, got {key!r}")
    return {key: _dump(item) for key, item in value.items()}


def _str_map(value: Any, path: str) -> dict[str, str]:
    obj = _object(value, path)
    for key, item in obj.items():
        _str(item, f"{path}[{key!r}]")
    return obj


_SCALARS = (str, int, float, bool, type(None))


def _dump(value: Any) -> Any:
    """Turns a value into fresh JSON data, so that no two objects share a dict or list."""
    # exact types first: what json.loads makes, checked without the ABC machinery
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {key: _dump(item) for key, item in value.items()}
    if kind is list:
        return [_dump(item) for item in value]
    if isinstance(value, _Model):
        return value.to_json()
    if isinstance(value, Digest):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _dump(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(item) for item in value]
    return value


def _none() -> None:
    return None


@dataclass(frozen=True)
class _Field:
    """How one JSON member maps to one attribute."""

    key: str  # the JSON member name
    attr: str  # the attribute name
    parse: _Parser
    empty: Callable[[], Any] = _none  # the value when the member is absent or null
    required: bool = False  # absent or null is an error
    always: bool = False  # to_json emits it even when empty (for objects not parsed)


def _req(key: str, attr: str, parse: _Parser) -> _Field:
    return _Field(key, attr, parse, required=True, always=True)


def _opt(key: str, attr: str, parse: _Parser = _str) -> _Field:
    return _Field(key, attr, parse)


def _many(key: str, attr: str, parse: _Parser, always: bool = False) -> _Field:
    return _Field(key, attr, parse, tuple, always=always)


def _map(key: str, attr: str, parse: _Parser = _str_map) -> _Field:
    return _Field(key, attr, parse, dict)


@dataclass(frozen=True)
class _Shape:
    """What to_json needs to reproduce a parsed object exactly."""

    keys: tuple[str, ...]  # member names in document order
    nulls: frozenset[str]  # modelled members that were explicitly null


_M = TypeVar("_M", bound="_Model")


class _Model:
    """The JSON mapping shared by the model classes, driven by each class's ``_FIELDS``."""

    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    _KEYS: ClassVar[frozenset[str]] = frozenset()  # the members of _FIELDS, made once
    extra: Mapping[str, Any]
    # Set by from_json only, so that replace() and hand-built objects emit canonical JSON.
    _shape: Optional[_Shape] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._KEYS = frozenset(f.key for f in cls._FIELDS)

    def __post_init__(self) -> None:
        clash = sorted(self._KEYS.intersection(self.extra)) if self.extra else ()
        if clash:
            raise ConfigurationError(
                f"{type(self).__name__}.extra must not hold modelled members: {', '.join(clash)}"
            )
        for f in self._FIELDS:
            # Accept lists from hand-built objects, but keep the frozen objects' tuples.
            value = getattr(self, f.attr)
            if isinstance(value, list):
                object.__setattr__(self, f.attr, tuple(value))

    @classmethod
    def from_json(cls: type[_M], obj: Mapping[str, Any]) -> _M:
        """Builds the object from parsed JSON; a malformed one raises ConfigurationError."""
        try:
            return cls._parse(obj, cls.__name__)
        except RecursionError:
            raise ConfigurationError(f"{cls.__name__}: JSON nested too deeply") from None

    @classmethod
    def _parse(cls: type[_M], obj: Any, path: str) -> _M:
        if not isinstance(obj, Mapping):
            raise _type_error(path, "a JSON object", obj)
        values: dict[str, Any] = {}
        nulls = set()
        for f in cls._FIELDS:
            where = f"{path}.{f.key}"
            raw = obj.get(f.key)
            if raw is not None:
                values[f.attr] = f.parse(raw, where)
            elif f.required:
                state = "null" if f.key in obj else "missing"
                raise ConfigurationError(f"{where}: required member is {state}")
            else:
                values[f.attr] = f.empty()
                if f.key in obj:
                    nulls.add(f.key)
        known = cls._KEYS
        extra = _object({k: v for k, v in obj.items() if k not in known}, path)
        instance = cast(Any, cls)(extra=extra, **values)
        object.__setattr__(instance, "_shape", _Shape(tuple(obj), frozenset(nulls)))
        return cast(_M, instance)

    @classmethod
    def from_bytes(cls: type[_M], data: Union[bytes, bytearray, memoryview]) -> _M:
        """Parses a JSON document; invalid JSON or content raises ConfigurationError."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"{cls.__name__}: expected bytes, got {_kind(data)}")
        data = bytes(data)
        deep = False
        try:
            obj = json.loads(data)
            deep = too_deep(obj, data)
        except RecursionError:
            deep = True
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ConfigurationError(f"{cls.__name__}: not valid JSON: {e}") from None
        if deep:
            raise ConfigurationError(
                f"{cls.__name__}: JSON nested more than {MAX_JSON_DEPTH} levels deep"
            )
        return cls.from_json(obj)

    def to_json(self) -> dict[str, Any]:
        """Returns the object as fresh JSON data (dicts, lists, str, int, bool, None).

        For an object made by ``from_json`` this equals the object it was made from.
        """
        shape = self._shape
        out: dict[str, Any] = {}
        for f in self._FIELDS:
            value = getattr(self, f.attr)
            empty = value == f.empty()
            if shape is not None and f.key in shape.nulls and empty:
                out[f.key] = None
            elif not empty or (f.key in shape.keys if shape is not None else f.always):
                out[f.key] = _dump(value)
        for key, value in self.extra.items():
            out.setdefault(key, _dump(value))
        if shape is not None:
            # Document order first; members added since come last, in their own order.
            rank = {key: i for i, key in enumerate(shape.keys)}
            out = {key: out[key] for key in sorted(out, key=lambda k: rank.get(k, len(rank)))}
        return out
