"""Property tests: the config loader never crashes; every rejection names the file and what is wrong."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drainctl import config
from drainctl.errors import ConfigError

# CI runs 4k generated files here (10k across the fuzz tests); `DRAINCTL_FUZZ_SCALE=10` for the long run.
SCALE = int(os.environ.get("DRAINCTL_FUZZ_SCALE", "1"))
# Hypothesis forbids function-scoped fixtures in @given tests: one scratch file for the module.
SCRATCH = Path(tempfile.mkdtemp(prefix="drainctl-config-fuzz-")) / "drainctl.toml"

KNOWN_KEYS = {
    "controller": ["id", "state_dir", "silent_after_s", "offline_retention_s", "reconcile_min_interval_s"],
    "broker": ["url", "url_file", "ca_file", "reply_timeout_s", "reconnect_max_backoff_s"],
    "events": ["queue_expires_s", "max_length", "prefetch"],
    "http": ["listen", "token", "token_file"],
    "docker": ["host"],
}
POOL_KEYS = ["name", "queues", "replicas", "concurrency", "runtime", "command", "image", "version", "env", "surge",
             "max_per_host", "ready_timeout_s", "drain_deadline_s", "on_drain_deadline", "stop_timeout_s"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40) | st.text(max_size=5000))
values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, "nonsense", ""]), values, max_size=len(keys))


mappings = st.fixed_dictionaries(
    {},
    optional={
        **{name: _section(keys) for name, keys in KNOWN_KEYS.items()},
        "pool": st.lists(_section(POOL_KEYS), max_size=3) | values,
        "extra": values,
    },
)


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed TOML of the right shape, with wrong values, unknown keys and syntax slips."""
    lines = []
    for section, keys in KNOWN_KEYS.items():
        if draw(st.booleans()):
            lines.append(f"[{section}]")
            for key in draw(st.lists(st.sampled_from([*keys, "typo"]), max_size=3, unique=True)):
                lines.append(f"{key} = {draw(st.sampled_from(['1', '-1', '0.5', 'true', '[]', '{}']) | st.text(max_size=20).map(_quoted))}")
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        lines.append("[[pool]]")
        for key in draw(st.lists(st.sampled_from(POOL_KEYS), max_size=6, unique=True)):
            value = draw(st.sampled_from(['"p"', '["q"]', '["celery", "worker"]', "3", "0", '"docker"', "{a = 1}"]))
            lines.append(f"{key} = {value}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), draw(st.text(max_size=30)))
    return "\n".join(lines) + "\n"


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
