"""Property tests: the config loader never crashes; every rejection names the file and what is wrong."""

from __future__ import annotations

import os
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from drainctl import config
from drainctl.config_canary import CanarySettings
from drainctl.config_docker import DockerSettings, EngineSettings
from drainctl.errors import ConfigError

# CI runs 4k generated files here (10k across the fuzz tests); `DRAINCTL_FUZZ_SCALE=10` for the long run.
SCALE = int(os.environ.get("DRAINCTL_FUZZ_SCALE", "1"))
# Hypothesis forbids function-scoped fixtures in @given tests: one scratch file for the module.
SCRATCH = Path(tempfile.mkdtemp(prefix="drainctl-config-fuzz-")) / "drainctl.toml"

# The keys come from the pydantic models themselves (recursively): a new key is fuzzed the day it exists.
# `source` is set by the loader, never read from a file (a file that has it is refused).
NOT_FILE_KEYS = {"source"}


@dataclass(frozen=True)
class Table:
    """A TOML table of the config file: `[controller]`, or `[[pool]]` (an array of tables)."""

    path: tuple[str, ...]
    keys: list[str]  # its plain keys (sub-tables are tables of their own)
    array: bool


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_in(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds (`M`, `M | None`, `list[M]`), and whether as a list (an array of tables);
    None for a plain value."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _model_in(inner[0]) if len(inner) == 1 else None
    if _is_model(annotation):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is list and len(args) == 1 and _is_model(args[0]):
        return args[0], True
    return None


def tables(model: type[BaseModel] = config.Settings, path: tuple[str, ...] = (), array: bool = False) -> list[Table]:
    """Every table of the config file below `model`, depth first; the top level itself is `path == ()`."""
    found = [Table(path, [], array)]
    for name, field in model.model_fields.items():
        if name in NOT_FILE_KEYS and not path:
            continue
        inner = _model_in(field.annotation)
        if inner is None:
            found[0].keys.append(name)
        else:
            found.extend(tables(inner[0], (*path, name), inner[1]))
    return found


TABLES = tables()
TOP_LEVEL = TABLES[0]
SECTIONS = [t for t in TABLES[1:] if not t.array]
ARRAYS = [t for t in TABLES[1:] if t.array]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40) | st.text(max_size=5000))
values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, "nonsense", ""]), values, max_size=len(keys) + 1)


def _mapping(below: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """A table's plain keys (and unknown ones) with any values, and its sub-tables, themselves as mappings."""
    own = next(t for t in TABLES if t.path == below)
    children = {t.path[-1]: (st.lists(_mapping(t.path), max_size=3) | values) if t.array else _mapping(t.path)
                for t in TABLES if len(t.path) == len(below) + 1 and t.path[:-1] == below}
    return st.builds(lambda keys, tables: {**keys, **tables}, _table(own.keys),
                     st.fixed_dictionaries({}, optional=children))


mappings = _mapping()


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed TOML of the right shape, with wrong values, unknown keys and syntax slips."""
    lines = []
    for section in SECTIONS:
        if draw(st.booleans()):
            lines.append(f"[{'.'.join(section.path)}]")
            for key in draw(st.lists(st.sampled_from([*section.keys, "typo"]), max_size=3, unique=True)):
                lines.append(f"{key} = {draw(st.sampled_from(['1', '-1', '0.5', 'true', '[]', '{}']) | st.text(max_size=20).map(_quoted))}")
    for array in ARRAYS:
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            lines.append(f"[[{'.'.join(array.path)}]]")
            for key in draw(st.lists(st.sampled_from(array.keys), max_size=6, unique=True)):
                value = draw(st.sampled_from(['"p"', '["q"]', '["celery", "worker"]', "3", "0", '"docker"', "{a = 1}",
                                              "true", "false"]))
                lines.append(f"{key} = {value}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), draw(st.text(max_size=30)))
    return "\n".join(lines) + "\n"


def _file_keys(model: BaseModel, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The key path of every plain value, found by walking an instance (not the annotations `tables` reads)."""
    found: set[tuple[str, ...]] = set()
    for name in type(model).model_fields:
        value = getattr(model, name)
        inner = value if isinstance(value, list) and value and isinstance(value[0], BaseModel) else [value]
        if isinstance(inner[0], BaseModel):
            for item in inner:
                found |= _file_keys(item, (*path, name))
        else:
            found.add((*path, name))
    return found


def test_the_fuzzers_know_every_key_of_the_config_file() -> None:
    # With every optional table filled in, so that the walk reaches their keys too.
    pool = config.PoolSettings(name="p", queues=["q"], replicas=1, command=["celery"],
                               canary=CanarySettings(steps=[1]))
    docker = DockerSettings(engine=[EngineSettings(name="a", host="unix:///run/a.sock")])
    every_key = _file_keys(config.Settings(pool=[pool], docker=docker)) - {(key,) for key in NOT_FILE_KEYS}
    fuzzed = {(*table.path, key) for table in TABLES for key in table.keys}
    assert fuzzed == every_key
    assert {("pool", "quiet_start"), ("broker", "consumer_timeout_s"), ("controller", "id")} <= fuzzed
    assert [t.path for t in SECTIONS] == [("controller",), ("broker",), ("events",), ("http",), ("docker",),
                                          ("pool", "canary")]
    assert [t.path for t in ARRAYS] == [("docker", "engine"), ("pool",)] and TOP_LEVEL.keys == []


def _load_bytes(raw: bytes) -> None:
    SCRATCH.write_bytes(raw)
    try:
        loaded = config.load(SCRATCH)
    except ConfigError as exc:
        message = str(exc)
        assert str(SCRATCH) in message, message  # every rejection says which file
        assert message.strip(), "an empty error"
    else:
        assert loaded.source == str(SCRATCH)


@settings(max_examples=1500 * SCALE, deadline=None)
@given(st.binary(max_size=400))
@example(b"a = " + b"[" * 5000 + b"]" * 5000)  # tomllib recurses: nesting must be a clear error, not a crash
@example(b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000)
@example(b"\xff\xfe[controller]\n")
@example(b"[controller]\nid = \"" + b"x" * 200_000 + b"\"\n")
def test_any_bytes_load_or_fail_with_the_file_named(raw: bytes) -> None:
    _load_bytes(raw)


@settings(max_examples=1500 * SCALE, deadline=None)
@given(toml_texts())
def test_toml_of_the_right_shape_loads_or_fails_with_file_and_key(text: str) -> None:
    _load_bytes(text.encode())


@settings(max_examples=1000 * SCALE, deadline=None)
@given(mappings)
def test_any_structure_validates_or_fails_naming_the_key(data: dict[str, Any]) -> None:
    try:
        loaded = config.from_mapping(data, source="fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        assert loaded.source == "fuzz.toml"
        return
    lines = message.splitlines()[1:]
    assert lines, message
    for line in lines:  # "fuzz.toml: <key path>: <what is wrong>"
        where, _, rest = line.strip().partition(": ")
        assert where == "fuzz.toml" and ": " in rest, line


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:
        f.truncate(config.MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=r"huge\.toml: larger than 1024 KiB"):
        config.load(path)
