"""A strict, declarative schema for YAML parameters, built on frozen dataclasses.

A schema is a tree of frozen dataclasses deriving from `Section`; its top one is declared with
`class Top(Section, root=True)`. `from_dict` rejects unknown keys, wrong types and invalid
choices with a `ConfigError` that names the key (dotted path) and what would be valid.

A field's type gives its choices (`Literal`) and its YAML type, and `spec(...)` beside the field
gives its bounds and any other rule on its value alone. A section's dotted key (`train`,
`pretrain.vae`) comes from where it nests under its root, so a rule is never spelt with its key;
the few rules between two fields are each section's `_check_across_fields`, which names a field
with `dotted_key`.

This module knows no particular schema: `facemogle/core/config.py` declares the params sections.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or outside its valid values."""


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raise a `ConfigError` naming `key` unless `condition` holds."""
    if not condition:
        _fail(key, expected, value)


def _fail(key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"params: '{key}' must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Declaring a schema
# ----------------------------------------------------------------------------------------------


class Rule(NamedTuple):
    """A rule on one field's value: `test(value)` holds, or the value must be `expected`."""

    test: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class Bounds:
    """Numeric bounds of a field; called on a value, says whether the value is within them."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None

    def __call__(self, value: Any) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
                and (self.multiple_of is None or value % self.multiple_of == 0))

    def describe(self, integer: bool) -> str:
        """What a valid value is, in words ("a positive integer", "in [0, 1)")."""
        if self.multiple_of is not None:  # with ge and le
            return f"a multiple of {self.multiple_of} between {self.ge} and {self.le}"
        kind = "integer" if integer else "number"
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = (self.le, "]") if self.le is not None else (self.lt, ")")
        if high[0] is None:
            if low == ("[", 0):
                return f"a non-negative {kind}"
            if low == ("(", 0) or (integer and low == ("[", 1)):
                return f"a positive {kind}"
            article = "an integer" if integer else "a number"
            return f"{article} {'>=' if low[0] == '[' else '>'} {low[1]}"
        interval = f"{low[0]}{low[1]}, {high[0]}{high[1]}"
        return f"an integer in {interval}" if integer else f"in {interval}"


class _Spec(NamedTuple):
    bounds: Bounds | None
    expected: str | None  # words for `bounds`, where `Bounds.describe` would not do
    rules: tuple[Rule, ...]


_SPEC = f"{__name__}.spec"  # the `field` metadata key of a `_Spec`


def spec(default: Any, *rules: Rule, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, multiple_of: int | None = None,
         expected: str | None = None) -> Any:
    """A dataclass field with `default` whose value must be within the bounds and pass `rules`.

    A value out of bounds is reported as "must be `expected`", by default the bounds in words
    (see `Bounds.describe`; "null or ..." where the field may be null, and null always passes).
    """
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt, "multiple_of": multiple_of}
    bounds = Bounds(**given) if any(v is not None for v in given.values()) else None
    return field(default=default, metadata={_SPEC: _Spec(bounds, expected, rules)})


_ROOTS: list[type] = []  # the classes declared with `root=True`, in order


class Section:
    """Base of a schema's frozen dataclasses: each field's `spec` is checked when one is made
    (loaded, built in code, or `dataclasses.replace`d), then the rules between its fields.

    `class Top(Section, root=True)` declares the top of a schema: the dotted keys of the sections
    nested in it start there.
    """

    def __init_subclass__(cls, root: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if root:
            _ROOTS.append(cls)

    def __post_init__(self) -> None:
        _check_fields(self)
        self._check_across_fields()

    def _check_across_fields(self) -> None:
        """Rules that relate two fields of the section; none unless the section has some."""


def _check_fields(section: Any) -> None:
    """Raise a `ConfigError` naming the dotted key of the first field of `section` that breaks
    its `spec`."""
    cls = type(section)
    for name, key, nullable, rules in _field_rules(cls, _prefix(cls)):
        value = getattr(section, name)
        if value is None and nullable:
            continue
        for rule in rules:
            check(rule.test(value), key, rule.expected, value)


def dotted_key(section: Any, name: str) -> str:
    """The dotted key of field `name` of `section` (`train.lr`, `pretrain.vae.steps`)."""
    return _prefix(type(section)) + name


def _prefix(cls: type) -> str:
    """The dotted-key prefix of section class `cls`; "" for a root or a class under none."""
    return _prefixes(tuple(_ROOTS)).get(cls, "")


def _nested_sections(cls: type, prefix: str = "") -> Iterator[tuple[type, str]]:
    """`cls` and every config dataclass nested in it, each with its dotted-key prefix."""
    yield cls, prefix
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _nested_sections(hints[f.name], f"{prefix}{f.name}.")


@functools.cache
def _prefixes(roots: tuple[type, ...]) -> dict[type, str]:
    """The dotted-key prefix of each section class, from where it nests under `roots`
    (`TinyVAEConfig`: "pretrain.vae."); each class nests at one place only."""
    prefixes: dict[type, str] = {}
    for root in roots:
        for cls, prefix in _nested_sections(root):
            if prefixes.setdefault(cls, prefix) != prefix:
                raise TypeError(f"{cls.__name__} nests at both '{prefixes[cls]}' and '{prefix}'")
    return prefixes


def _non_null(tp: Any) -> tuple[Any, bool]:
    """`tp` without its `None` option, and whether it had one (`int | None` -> int, True)."""
    options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    rest = [option for option in options if option is not type(None)]
    return (rest[0] if len(rest) == 1 else tp), len(rest) < len(options)


@functools.cache
def _field_rules(cls: type, prefix: str) -> tuple[tuple[str, str, bool, tuple[Rule, ...]], ...]:
    """(name, dotted key, whether null passes, rules) of each field of `cls` that has a `spec`."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if _SPEC not in f.metadata:
            continue
        bounds, expected, rules = f.metadata[_SPEC]
        tp, nullable = _non_null(hints[f.name])
        if bounds is not None:
            words = expected or bounds.describe(integer=tp is int)
            rules = (Rule(bounds, "null or " + words if nullable else words),) + rules
        found.append((f.name, prefix + f.name, nullable, rules))
    return tuple(found)


# ----------------------------------------------------------------------------------------------
# Strict conversion from plain YAML values
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        return "a list of " + _type_name(get_args(tp)[0])
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _not_bool(*types_: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, types_) and not isinstance(value, bool)


# The YAML scalars a field type accepts, and its name in the error message.
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda value: isinstance(value, bool), "true or false"),
    int: (_not_bool(int), "an integer"),
    float: (_not_bool(int, float), "a number"),
    str: (lambda value: isinstance(value, str), "a string"),
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` (plain YAML) as field type `tp`, or a `ConfigError` naming `key`."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(key, f"a mapping of {tp.__name__} fields", value)
        return from_dict(tp, value, key + ".")
    if origin is Literal:
        if value not in get_args(tp):
            _fail(key, f"one of {list(get_args(tp))}", value)
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key)
    if origin is tuple:
        return _convert_tuple(value, get_args(tp), key)
    if tp in _SCALARS:
        accepts, name = _SCALARS[tp]
        if not accepts(value):
            _fail(key, name, value)
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r} for '{key}'")


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    """`value` as the first option of `tp` that takes it."""
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is not type(None):
            try:
                return _convert(value, option, key)
            except ConfigError:
                pass
    _fail(key, _type_name(tp), value)


def _convert_tuple(value: Any, args: tuple[Any, ...], key: str) -> tuple:
    """`value` as `tuple[args]`: `tuple[T, ...]` any length, else exactly `len(args)` items."""
    if not isinstance(value, (list, tuple)):
        _fail(key, "a list", value)
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        _fail(key, f"a list of {len(args)} values", value)
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build and validate dataclass `cls` from a plain mapping whose keys sit under `prefix`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"params: unknown key '{prefix}{unknown[0]}'; valid keys under "
                          f"'{prefix.rstrip('.') or 'the top level'}': {names}")
    kwargs = {name: _convert(data[name], hints[name], prefix + name) for name in names
              if name in data}
    return cls(**kwargs)


def read_yaml_mapping(path: str | Path) -> dict | None:
    """The mapping a YAML params file holds (None for an empty file), or a `ConfigError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(data).__name__}")
    return data


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
