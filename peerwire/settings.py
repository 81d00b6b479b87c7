"""One configuration loader for every program: declared settings, merged flags > environment > file.

A program declares its settings once (``Setting``: name, kind, default, help, flag spelling) in a
``Settings`` table. One naming rule ties the three sources together: the setting ``cache_size``
is the flag ``--cache-size``, the environment variable ``<PREFIX>CACHE_SIZE`` and the TOML key
``cache_size``. In the file, a table stands for a name prefix (``[proxy] port`` is
``proxy_port``), and the program's own table (``[tracker]``, ``[dfdaemon]``) may hold any key.
An empty environment variable is unset. Values use one grammar (``peerwire.settingkinds``).

Every bad value, from any source, is a ``SettingsError`` whose text names the source and the
value and then says what is wrong in words that do not depend on the source; a program prints
it after its name and exits 2. ``Loaded.describe`` lists each setting, its value and where it
came from (``--print-config``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, TypeVar

from peerwire import settingkinds as kinds
from peerwire.settingkinds import Kind

T = TypeVar("T")

Action = Literal["store", "switch", "append"]
#: Longest text of a bad value quoted in an error.
MAX_QUOTED: Final = 100


class SettingsError(ValueError):
    """A bad flag, variable, file or value; ``str()`` is one line, without the program's name."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One option of a program, readable from a flag, a variable and a file key."""

    name: str
    kind: Kind
    help: str
    #: Shown in ``--help`` and used when no source sets the value and ``field`` is None; a
    #: config dataclass keeps its own defaults for its fields.
    default: Any = None
    #: ``--help``'s default when ``default`` is decided at run time (a path under ``$HOME``).
    default_text: str | None = None
    #: The config field it sets ("" = the same as ``name``; None: read by the program itself).
    field: str | None = ""
    #: Which of the program's config objects holds ``field``.
    group: str = ""
    #: "" = ``--name-with-dashes``; another spelling for repeatable flags; None = no flag.
    flag: str | None = ""
    short: str | None = None
    action: Action = "store"
    metavar: str | None = None
    #: Former names (``interval_s``): still read from the variable and the file, with a notice.
    aliases: tuple[str, ...] = ()
    #: Former names that meant the opposite (a bool setting ``no_x`` was once the key ``x``).
    inverse_aliases: tuple[str, ...] = ()
    #: Read ``<PREFIX><NAME>``; then these variables, in order (shared or another program's).
    own_env: bool = True
    other_env: tuple[str, ...] = ()
    in_file: bool = True
    #: The variable holds JSON (lists and tables of the proxy).
    json_env: bool = False
    #: The config field holds the opposite of the setting (``no_back_to_source``).
    negate: bool = False

    @property
    def field_name(self) -> str | None:
        return self.name if self.field == "" else self.field

    @property
    def flag_name(self) -> str | None:
        return "--" + self.name.replace("_", "-") if self.flag == "" else self.flag


@dataclass(frozen=True, slots=True)
class _Given:
    """A raw value as a source gave it, before conversion."""

    raw: object
    #: How an error names the source: ``--interval``, ``DFTRACKER_INTERVAL``, ``config file P: k``.
    label: str
    #: How ``--print-config`` names it: ``flag --interval``, ``env NAME``, ``file PATH``.
    source: str
    invert: bool = False
    #: A former name was used: the notice to print (it still works).
    notice: str | None = None


#: The cluster secret itself, shared by every program (``peerwire.auth``); each checks it at
#: start (at least 16 bytes), whether it uses it or not, so a weak secret is found at once.
CLUSTER_SECRET: Final = Setting(
    "secret",
    kinds.SECRET,
    "the cluster secret itself",
    field=None,
    flag=None,
    own_env=False,
    other_env=("DRAGONFLY_SECRET",),
    in_file=False,
)


def _quote(raw: object, flag: bool) -> str:
    """The value as an error quotes it; a repeatable flag given once quotes that one value."""
    if flag and isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    text = repr(raw)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ``SettingsError``: one line, exit 2, like bad values."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


class Settings:
    """A program's settings: its flags, variables and file keys, and the merge of the three."""

    def __init__(
        self,
        program: str,
        prefix: str,
        settings: Sequence[Setting],
        tables: tuple[str, ...] = (),
        user_file: Callable[[Mapping[str, str]], Path] | None = None,
        user_file_text: str = "",
    ) -> None:
        self.program = program
        self.prefix = prefix
        self.settings = tuple(settings)
        self.by_name = {setting.name: setting for setting in self.settings}
        if len(self.by_name) != len(self.settings):
            raise ValueError(f"{program}: two settings share a name")
        #: The program's own tables in the file (``[tracker]``); top-level keys work too.
        self.tables = tables
        self.user_file = user_file
        self.user_file_text = user_file_text
        self.config_env = prefix + "CONFIG"
        self._keys: dict[str, tuple[Setting, str, bool]] = {}
        for setting in self.settings:
            if setting.in_file:
                self._keys[setting.name] = (setting, setting.name, False)
                for alias in setting.aliases:
                    self._keys[alias] = (setting, alias, False)
                for alias in setting.inverse_aliases:
                    self._keys[alias] = (setting, alias, True)

    # -- the command line -------------------------------------------------------------------

    def env_names(self, setting: Setting) -> tuple[str, ...]:
        own = (self.prefix + setting.name.upper(),) if setting.own_env else ()
        return own + setting.other_env

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Every setting's flag (dest = the setting's name, None when not given), ``--config``
        and ``--print-config``; each help line names the variable, the key and the default."""
        for setting in self.settings:
            flag = setting.flag_name
            if flag is None:
                continue
            spellings = [setting.short, flag] if setting.short else [flag]
            env = self.env_names(setting)
            sources = [f"env {' or '.join(env)}"] if env else []
            if setting.in_file:
                sources.append(f"key {setting.name}")
            default = setting.default_text or setting.kind.show(setting.default)
            text = f"{setting.help} [{', '.join(sources)}; default {default or '(none)'}]"
            options: dict[str, Any] = {"dest": setting.name, "help": text.replace("%", "%%")}
            if setting.action == "switch":
                options.update(action="store_const", const=True)
            else:
                options["metavar"] = setting.metavar or setting.kind.metavar
                if setting.action == "append":
                    options["action"] = "append"
            parser.add_argument(*spellings, **options)
        where = f"else ${self.config_env}"
        if self.user_file_text:
            where += f", else {self.user_file_text} when it exists"
        parser.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help=f"TOML file with any setting above, by its key ({where})",
        )
        parser.add_argument(
            "--print-config",
            action="store_true",
            help="print every setting, its value and where it came from, then exit",
        )

    def find_config_file(self, flag: Path | None, environ: Mapping[str, str]) -> Path | None:
        """``--config``, else ``$<PREFIX>CONFIG``, else the per-user file when it exists."""
        if flag is not None:
            return flag
        if environ.get(self.config_env):
            return Path(environ[self.config_env])
        if self.user_file is not None:
            default = self.user_file(environ)
            return default if default.is_file() else None
        return None

    # -- the file -----------------------------------------------------------------------------

    def read_file(self, path: Path) -> dict[str, _Given]:
        """The file's values by setting name; SettingsError for an unreadable file, bad TOML,
        unknown keys (all named, with the known ones) or a setting given twice."""
        import tomllib  # only when there is a file: `--help` does without it

        where = f"config file {path}"
        try:
            document = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise SettingsError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{where}: not UTF-8 text: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{where}: not valid TOML: {exc}") from None
        found: dict[str, _Given] = {}
        unknown: list[str] = []
        for table in self.tables:
            inner = document.get(table)
            if table in document and not isinstance(inner, dict):
                raise SettingsError(f"{where}: [{table}] must be a table, not {inner!r:.100}")
        own = [(f"{table}.", document.pop(table)) for table in self.tables if table in document]
        for dotted, table_values in [("", document), *own]:
            self._walk(path, table_values, dotted, "", found, unknown)
        if unknown:
            noun = "key" if len(unknown) == 1 else "keys"
            raise SettingsError(
                f"{where}: unknown {noun} {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(s.name for s in self.settings if s.in_file))})"
            )
        return found

    def _walk(
        self,
        path: Path,
        table: Mapping[str, Any],
        dotted: str,
        name_prefix: str,
        found: dict[str, _Given],
        unknown: list[str],
    ) -> None:
        for key, raw in table.items():
            name = name_prefix + key
            if name in self._keys:
                setting, spelled, invert = self._keys[name]
                where = f"config file {path}"
                if setting.name in found:
                    raise SettingsError(
                        f"{where}: {dotted}{key} sets {setting.name!r} again "
                        f"(already set by {found[setting.name].label.removeprefix(where + ': ')})"
                    )
                notice = None
                if spelled != setting.name:
                    new = setting.name.removeprefix(name_prefix)
                    opposite = " (the opposite)" if invert else ""
                    notice = f"{where}: key {dotted}{key} is deprecated, use {dotted}{new}"
                    notice += opposite
                label = f"{where}: {dotted}{key}"
                found[setting.name] = _Given(raw, label, f"file {path}", invert, notice)
            elif isinstance(raw, dict) and any(k.startswith(name + "_") for k in self._keys):
                self._walk(path, raw, f"{dotted}{key}.", name + "_", found, unknown)
            else:
                unknown.append(dotted + key)

    # -- the merge ----------------------------------------------------------------------------

    def load(
        self, flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None
    ) -> Loaded:
        """Flags (by setting name; None = not given) over ``environ`` over ``config_file``."""
        from_file = self.read_file(config_file) if config_file is not None else {}
        notices: list[str] = []
        given: dict[str, _Given] = {}
        for setting in self.settings:
            found = self._from_flag(setting, flags) or self._from_env(setting, environ, notices)
            if found is None:
                found = from_file.get(setting.name)
                if found is not None and found.notice is not None:
                    notices.append(found.notice)
            if found is not None:
                given[setting.name] = found
        values: dict[str, Any] = {}
        for setting in self.settings:
            found = given.get(setting.name)
            if found is None:
                values[setting.name] = setting.default
                continue
            values[setting.name] = self._convert(setting, found)
        return Loaded(self, values, given, tuple(notices))

    def _from_flag(self, setting: Setting, flags: Mapping[str, Any]) -> _Given | None:
        raw = flags.get(setting.name) if setting.flag_name is not None else None
        if raw is None:
            return None
        return _Given(raw, str(setting.flag_name), f"flag {setting.flag_name}")

    def _from_env(
        self, setting: Setting, environ: Mapping[str, str], notices: list[str]
    ) -> _Given | None:
        for name in self.env_names(setting):
            if environ.get(name):
                return _Given(environ[name], name, f"env {name}")
        if not setting.own_env:
            return None
        former = [(a, False) for a in setting.aliases]
        for alias, invert in former + [(a, True) for a in setting.inverse_aliases]:
            name = self.prefix + alias.upper()
            if environ.get(name):
                new = self.prefix + setting.name.upper()
                opposite = " (the opposite)" if invert else ""
                notices.append(f"{name} is deprecated, use {new}{opposite}")
                return _Given(environ[name], name, f"env {name}", invert)
        return None

    def _convert(self, setting: Setting, found: _Given) -> Any:
        raw = found.raw
        try:
            if setting.json_env and found.source.startswith("env "):
                try:
                    raw = json.loads(str(raw))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not JSON: {exc}") from None
            value = setting.kind.parse(raw)
        except (ValueError, TypeError) as exc:
            raise _error(setting, found, str(exc)) from None
        return not value if found.invert else value


def _error(setting: Setting, found: _Given, message: str) -> SettingsError:
    if setting.kind.sensitive:
        return SettingsError(f"{found.label}: {message}")
    shown = _quote(found.raw, found.source.startswith("flag "))
    return SettingsError(f"{found.label}={shown}: {message}")


class Loaded:
    """The merged values of one program: by setting name, with where each came from."""

    def __init__(
        self,
        settings: Settings,
        values: dict[str, Any],
        given: dict[str, _Given],
        notices: tuple[str, ...],
    ) -> None:
        self.settings = settings
        #: Every setting's value (its declared default when no source set it).
        self.values: Mapping[str, Any] = values
        self._given = given
        #: Deprecated names that were used, one line each, for stderr.
        self.notices = notices

    def is_set(self, name: str) -> bool:
        return name in self._given

    def source(self, name: str) -> str:
        """``default``, ``file PATH``, ``env NAME`` or ``flag --name``."""
        found = self._given.get(name)
        return found.source if found is not None else "default"

    def error(self, name: str, message: str) -> SettingsError:
        """A SettingsError about setting ``name``, naming its source and value as usual."""
        setting = self.settings.by_name[name]
        found = self._given.get(name)
        if found is None:
            return SettingsError(f"{name}: {message}")
        return _error(setting, found, message)

    def build(self, factory: Callable[..., T], group: str = "", **base: Any) -> T:
        """``factory(**base, **fields set by a source)`` (defaults stay the factory's own).

        A ValueError of the factory's validation is blamed on the one setting that fails on its
        own; otherwise it names the sources of the settings its message mentions.
        """
        chosen: list[tuple[Setting, str, Any]] = []
        for setting in self.settings.settings:
            field = setting.field_name
            if setting.group == group and field is not None and setting.name in self._given:
                value = self.values[setting.name]
                chosen.append((setting, field, not value if setting.negate else value))
        try:
            return factory(**base, **{field: value for _, field, value in chosen})
        except ValueError as exc:
            for setting, field, value in chosen:
                try:
                    factory(**base, **{field: value})
                except ValueError as alone:
                    raise self.error(setting.name, str(alone)) from None
            named = [self._given[s.name].label for s, field, _ in chosen if field in str(exc)]
            suffix = f" (set by {', '.join(named)})" if named else ""
            raise SettingsError(f"{exc}{suffix}") from None

    def describe(self, objects: Mapping[str, object]) -> list[str]:
        """One line per setting: ``name = value  # source``; the value as the built config
        (``objects`` by group) holds it. Sensitive values read ``<set>``/``<unset>``."""
        rows: list[tuple[str, str]] = []
        for setting in self.settings.settings:
            holder = objects.get(setting.group)
            field = setting.field_name
            if field is not None and holder is not None and hasattr(holder, field):
                value = getattr(holder, field)
                value = not value if setting.negate else value
            else:
                value = self.values[setting.name]
            text = setting.kind.show(value) or '""'
            rows.append((f"{setting.name} = {text}", setting.name))
        width = max(len(left) for left, _ in rows)
        return [f"{left:<{width}}  # {self.source(name)}" for left, name in rows]
