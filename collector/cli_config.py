"""Layered settings for ``gpuaudit collector`` and ``gpuaudit agent``.

Precedence, lowest first: built-in flag defaults < the config file (section
``collector:`` or ``agent:``) < environment ``GPUAUDIT_<KEY>`` < command-line
flags. A key is a long flag name with ``_`` for ``-`` (``--spool-dir`` ->
``spool_dir``), so the set of keys is derived from the parser and cannot drift
from it. File and environment values are converted with the flag's own argparse
type and checked against its choices, then installed with ``set_defaults`` on
the subparser: flags still win and the commands' code reads ``args`` unchanged.

Unknown sections or keys, wrong types and an unreadable or missing explicit
``--config`` file are usage errors: exit 2 with a message naming the key.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collector import strictyaml
from collector.cli_args import listen_arg

DEFAULT_CONFIG = "/etc/gpuaudit/gpuaudit.yaml"
"""Read when present; a missing default file is fine, a missing ``--config`` file is not."""

ENV_PREFIX = "GPUAUDIT_"
LAYERED_COMMANDS = ("collector", "agent")
"""The sections of the file; the other subcommands take flags (and their old env vars) only."""

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
TLS_KEYS = ("tls_dir", "tls_ca", "tls_cert", "tls_key")

_UNSET = object()  # marks "not on the command line" in the probe parse


class ConfigError(Exception):
    """A config file or environment value that cannot be used; exit 2 with this message."""


def add_config_flag(p: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` to a layered subcommand."""
    p.add_argument("--config", metavar="PATH", default=None,
                   help=f"settings file, section '{p.prog.split()[-1]}' (default: "
                   f"{DEFAULT_CONFIG} when present); precedence: file < env "
                   f"{ENV_PREFIX}<KEY> < flags")


@dataclass(frozen=True)
class Setting:
    """One layered key: the flag it mirrors and how to convert a value for it."""

    key: str
    flag: str
    action: argparse.Action

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def is_bool(self) -> bool:
        return isinstance(self.action, argparse._StoreTrueAction)

    @property
    def expected(self) -> str:
        """The expected type, in words, for error messages."""
        if self.is_bool:
            return "a boolean (true/false, yes/no, 1/0)"
        if self.action.choices:
            return "one of " + ", ".join(str(c) for c in self.action.choices)
        kind = _number_kind(self.action.type)
        if kind is not None:
            return _number_words(self.action.type, kind)
        if self.action.type is listen_arg:
            return "a HOST:PORT string"
        return "a string"

    def from_text(self, text: str) -> Any:
        """Convert a string exactly as argparse would convert the flag's argument."""
        if self.is_bool:
            word = text.strip().lower()
            if word in TRUE_WORDS or word in FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValueError(f"{text!r} is not a boolean")
        convert: Callable[[str], Any] = self.action.type or str  # type: ignore[assignment]
        try:
            value = convert(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            raise ValueError(str(err) or f"invalid value {text!r}") from None
        if self.action.choices and value not in self.action.choices:
            raise ValueError(f"{text!r} is not a valid choice")
        return value

    def from_yaml(self, value: object) -> Any:
        """Convert a YAML scalar; only the YAML types that can mean this flag's type."""
        if self.is_bool and isinstance(value, bool):
            return value
        if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
            raise ValueError(f"got {_yaml_type(value)}")
        if not isinstance(value, str) and not (self.is_bool or _number_kind(self.action.type)):
            # `node: 007` would arrive as 7: a string key must be quoted, not guessed.
            raise ValueError(f"got a number ({value!r}); quote it")
        return self.from_text(str(value))


def settings(sub: argparse.ArgumentParser) -> dict[str, Setting]:
    """The layered keys of one subcommand, from its long flags (not --help, --config)."""
    found: dict[str, Setting] = {}
    # argparse has no public way to list a parser's actions; _actions is stable since 2.7.
    for action in sub._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or longs[0] in ("--help", "--config"):
            continue
        key = longs[0][2:].replace("-", "_")
        found[key] = Setting(key=key, flag=longs[0], action=action)
    return found


def parse_layered(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                  environ: Mapping[str, str] | None = None,
                  default_config: str = DEFAULT_CONFIG) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with file and env values as the subcommand's defaults.

    A bad file or env value ends like a bad flag: usage, the message, exit 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    sub = _subparser(parser, args[0]) if args else None
    if sub is None:
        return parser.parse_args(args)
    known = {c: settings(s) for c in LAYERED_COMMANDS if (s := _subparser(parser, c))}
    keys = known[args[0]]
    # Unknown arguments are left for the real parse below, which words them as before.
    probe, _ = sub.parse_known_args(args[1:], namespace=_probe_namespace(keys))
    explicit = {k for k, s in keys.items() if getattr(probe, s.dest) is not _UNSET}
    config = probe.config if probe.config is not _UNSET else None
    try:
        values = layered_values(args[0], known, explicit, _read_config(config, default_config),
                                os.environ if environ is None else environ)
    except ConfigError as err:
        sub.error(str(err))
    sub.set_defaults(**{keys[k].dest: v for k, v in values.items()})
    return parser.parse_args(args)


def layered_values(command: str, known: Mapping[str, Mapping[str, Setting]],
                   explicit: set[str], file: tuple[str, dict[str, Any]] | None,
                   environ: Mapping[str, str]) -> dict[str, Any]:
    """Defaults for ``command``'s flags from the file and the environment (env wins).

    ``known`` holds the keys of every section: both are checked, whichever runs.
    """
    keys = known[command]
    file_layer: dict[str, Any] = {}
    if file is not None:
        name, sections = file
        _check_sections(name, sections, known)
        # Both sections are converted: a bad value fails on every host that reads the file.
        converted = {c: _convert_file(name, c, body or {}, known[c])
                     for c, body in sections.items()}
        file_layer = converted.get(command, {})
    env_layer = _convert_env(keys, environ)
    # An --insecure flag must beat a tls_dir from the file or env, as it beats
    # $GPUAUDIT_TLS_DIR today: the highest layer that speaks about TLS decides.
    flag_layer = dict.fromkeys(explicit & {*TLS_KEYS, "insecure"}, True)
    _settle_tls([flag_layer, env_layer, file_layer])
    return {**file_layer, **env_layer}


def _settle_tls(layers: list[dict[str, Any]]) -> None:
    """Drop TLS keys of lower layers that contradict the highest layer's TLS choice."""
    insecure: bool | None = None
    for layer in layers:  # highest first
        if insecure is True:
            for key in TLS_KEYS:
                layer.pop(key, None)
        elif insecure is False:
            layer.pop("insecure", None)
        elif layer.get("insecure") is True:
            insecure = True
        elif "insecure" in layer or any(k in layer for k in TLS_KEYS):
            insecure = False


def _convert_file(name: str, command: str, section: Mapping[str, Any],
                  keys: Mapping[str, Setting]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in section.items():
        try:
            out[key] = keys[key].from_yaml(raw)
        except ValueError as err:
            raise ConfigError(f"{name}: {command}.{key}: expected "
                              f"{keys[key].expected}: {err}") from None
    _no_tls_clash(out, f"{name}, section {command}")
    return out


def _convert_env(keys: Mapping[str, Setting], environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, setting in keys.items():
        name = ENV_PREFIX + key.upper()
        text = environ.get(name, "")
        if text == "":  # unset and empty are the same, as for $GPUAUDIT_TLS_DIR before
            continue
        try:
            out[key] = setting.from_text(text)
        except ValueError as err:
            raise ConfigError(f"${name}: expected {setting.expected}: {err}") from None
    _no_tls_clash(out, f"the environment ({ENV_PREFIX}*)")
    return out


def _no_tls_clash(layer: Mapping[str, Any], where: str) -> None:
    tls = [k for k in TLS_KEYS if k in layer]
    if layer.get("insecure") is True and tls:
        raise ConfigError(f"{where}: insecure and {', '.join(tls)} exclude each other: "
                          "set one or the other")


def _check_sections(name: str, sections: Mapping[str, Any],
                    known: Mapping[str, Mapping[str, Setting]]) -> None:
    """Unknown sections, non-mapping sections and unknown keys are errors in both sections."""
    for section, body in sections.items():
        if section not in LAYERED_COMMANDS:
            raise ConfigError(f"{name}: unknown section {section!r} (valid sections: "
                              f"{', '.join(LAYERED_COMMANDS)})")
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{name}: section {section!r} must be a mapping of keys, "
                              f"got {_yaml_type(body)}")
        valid = known[section]
        unknown = sorted(str(k) for k in (body or {}) if k not in valid)
        if unknown:
            raise ConfigError(f"{name}: unknown key {unknown[0]!r} in section {section!r} "
                              f"(valid keys: {', '.join(sorted(valid))})")


def _read_config(explicit: str | None, default: str) -> tuple[str, dict[str, Any]] | None:
    """(path, top-level mapping), or None for a missing default file."""
    path = Path(default if explicit is None else explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit is None:
            return None
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        data = strictyaml.load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return str(path), {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections "
                          f"{' and '.join(LAYERED_COMMANDS)}, got {_yaml_type(data)}")
    return str(path), data



def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    if command not in LAYERED_COMMANDS:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return None


def _probe_namespace(keys: Mapping[str, Setting]) -> argparse.Namespace:
    # argparse fills in a default only where the namespace lacks the attribute, so
    # a pre-set sentinel that survives parsing means "not given on the command line".
    return argparse.Namespace(config=_UNSET, **{s.dest: _UNSET for s in keys.values()})


def _number_kind(convert: object) -> type | None:
    if convert is int or convert is float:
        return convert
    # positive(int) and friends (collector.cli_args) are closures over their kind.
    name = getattr(convert, "__qualname__", "")
    if callable(convert) and name.startswith(("positive.", "not_negative.")):
        kind = inspect.getclosurevars(convert).nonlocals.get("kind")
        return kind if kind in (int, float) else None
    return None


def _number_words(convert: object, kind: type) -> str:
    noun = "an integer" if kind is int else "a number"
    name = getattr(convert, "__qualname__", "")
    if name.startswith("positive."):
        return f"{noun} greater than 0"
    if name.startswith("not_negative."):
        return f"{noun}, 0 or more"
    return noun


def _yaml_type(value: object) -> str:
    if value is None:
        return "nothing (null); remove the key to use the default"
    names = {bool: "a boolean", dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(value), f"a {type(value).__name__} ({value!r})")
