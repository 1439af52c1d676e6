"""mkdocs hook: the reference pages that are generated from the code at every build, so that they
cannot go stale.

A page asks for a generated part with a block ``<!-- generated:NAME:start -->`` …
``<!-- generated:NAME:end -->``; in the repository the block holds a placeholder line, in the built
site what this hook makes:

- ``cli`` (``reference/cli.md``): the help of every ``effdetseg`` command, rendered by its own
  argparse parser (the parser is caught when the command parses its arguments, so nothing else of
  the command runs; ``train``, which takes Hydra overrides, prints its own help text).
- ``config`` (``reference/config.md``): every config key, read from the typed schema
  (``effdetseg.configs.schema``), with its value and comment in ``train.yaml`` and the data presets,
  and the recipe and augmentation presets as they are on disk.
- ``zoo`` (``guide/models.md``): the zoo table of README.md (the table
  ``effdetseg models --update-readme README.md`` writes and ``tests/models/test_models_command.py`` checks).
- ``camvid`` (``recipes/camvid.md``): the README's CamVid command, the one the benchmarks run.

Registered in ``mkdocs.yml`` under ``hooks:``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import importlib
import inspect
import io
import os
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from mkdocs.structure.files import Files

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- CLI


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _command_parser(name: str) -> argparse.ArgumentParser | None:
    """The argparse parser of ``effdetseg NAME``, caught when the command parses ``--help``."""
    module = importlib.import_module(f"effdetseg.commands.{name}")
    original = argparse.ArgumentParser.parse_known_args

    def catch(self, args=None, namespace=None):  # noqa: ANN001
        raise _Caught(self)

    argparse.ArgumentParser.parse_known_args = catch  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module.main(["--help"])
    except _Caught as caught:
        return caught.parser
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]
    return None


def _printed_help(name: str) -> str:
    """What ``effdetseg NAME --help`` prints, for a command without an argparse parser."""
    module = importlib.import_module(f"effdetseg.commands.{name}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            module.main(["--help"])
        except SystemExit:
            pass
    text = out.getvalue()
    if not text.strip():
        raise RuntimeError(f"effdetseg {name} --help printed nothing")
    return text


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its sub-commands here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _block(text: str) -> str:
    return "```text\n" + text.rstrip() + "\n```\n"


def cli_reference() -> str:
    from effdetseg.cli import COMMANDS, _usage

    lines = [_block(_usage())]
    old_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: fix it
    try:
        for name, summary in COMMANDS.items():
            lines += [f"## `effdetseg {name}`", "", summary[0].upper() + summary[1:] + ".", ""]
            parser = _command_parser(name)
            if parser is None:
                lines.append(_block(_printed_help(name)))
                continue
            lines.append(_block(parser.format_help()))
            for sub_name, sub in _subparsers(parser).items():
                lines += [f"### `effdetseg {name} {sub_name}`", "", _block(sub.format_help())]
    finally:
        if old_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old_columns
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ config

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str | None, int]:
    """``value  # comment`` → (value, comment, column of '#' within ``rest``)."""
    match = re.search(r"(^|\s)#\s?(.*)$", rest)
    if not match:
        return rest.strip(), None, -1
    return rest[: match.start()].strip(), match.group(2).strip(), match.start(0) + len(match.group(1))


def yaml_comments(text: str) -> dict[str, str]:
    """The comments of a YAML file by dotted key: a key's trailing comment with the comment lines
    aligned under it, and a node's own comment lines (indented inside it) after them."""
    comments: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open nodes
    last_key, last_col = None, -1
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            last_key = None
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if last_key is not None and abs(indent - last_col) <= 1:
                comments[last_key].append(comment)
            else:
                last_key = None
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                if stack and stack[0][1] != "defaults":
                    comments.setdefault(".".join(k for _, k in stack), []).append(comment)
            continue
        match = _KEY_LINE.match(raw)
        if not match:  # a list item or a continued value
            last_key = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        path = ".".join(k for _, k in stack)
        _, comment, col = _split_comment(match.group("rest"))
        if comment is not None:
            comments.setdefault(path, []).append(comment)
            last_key, last_col = path, len(match.group("indent")) + len(match.group("key")) + 1 + col
        else:
            last_key = None
    return {key: " ".join(parts) for key, parts in comments.items()}


def _schema_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass's source."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"^\s+(\w+):[^#]*#\s*(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2).strip()
    return out


def _type_text(hint: Any, written: str) -> str:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return " \\| ".join(str(m.value) for m in hint)
    return written.replace("|", "\\|")


def _value_text(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, (dict, list)) and len(str(value)) > 60:
        return "(see the file)"
    return "`" + str(value).replace("|", "\\|").replace("'", "") + "`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*").replace("\n", " ")


def _get(tree: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _schema_rows(cls: type, prefix: str, yaml: dict, comments: dict[str, str], skip: tuple[str, ...] = ()) -> list[str]:
    """One table row per leaf key of the dataclass ``cls`` (and per key the YAML puts in its open nodes)."""
    from omegaconf import MISSING

    hints = typing.get_type_hints(cls)
    own = _schema_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        path = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += _schema_rows(hint, path + ".", yaml, comments)
            continue
        present, value = _get(yaml, path)
        if not present:
            value = f.default if f.default is not dataclasses.MISSING and f.default != MISSING else "—"
        shown = value if not isinstance(value, dict) or not value else "(open node)"
        text = comments.get(path) or own.get(f.name, "")
        rows.append(f"| `{path}` | {_type_text(hint, str(f.type))} | {_value_text(shown) if shown != '—' else '—'} | {_cell(text)} |")
        if isinstance(value, dict):  # an open node: its keys are the target's arguments or free keys
            for key, item in value.items():
                sub = f"{path}.{key}"
                rows.append(f"| `{sub}` | (argument) | {_value_text(item)} | {_cell(comments.get(sub, ''))} |")
    return rows


def _config_files(folder: str) -> list[tuple[str, str]]:
    base = resources.files("effdetseg.configs")
    for part in folder.split("/") if folder else []:
        base = base / part
    return sorted((p.name.removesuffix(".yaml"), p.read_text()) for p in base.iterdir() if p.name.endswith(".yaml"))


def _preset_tree(name: str, raw: dict[str, str]) -> tuple[dict, dict]:
    """A data preset's keys (with the presets its defaults list names merged under it) and its group
    choices (``augmentation: flip``)."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(OmegaConf.create(raw[name]), resolve=False)
    merged: dict = {}
    groups: dict = {}
    for entry in tree.pop("defaults", []):
        if isinstance(entry, dict):
            groups.update(entry)
        elif entry != "_self_" and entry in raw:
            parent, parent_groups = _preset_tree(entry, raw)
            merged = _merge(merged, parent)
            groups = {**parent_groups, **groups}
    return _merge(merged, tree), groups


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _schema_default(cls: type, path: str) -> tuple[bool, Any]:
    """(whether the dataclass ``cls`` has the dotted key, its default there or None)."""
    from omegaconf import MISSING

    *parents, leaf = path.split(".")
    for part in parents:
        hint = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(hint):
            return False, None
        cls = hint
    field = next((f for f in dataclasses.fields(cls) if f.name == leaf), None)
    if field is None:
        return False, None
    if field.default is not dataclasses.MISSING:
        return True, None if field.default == MISSING else field.default
    if field.default_factory is not dataclasses.MISSING:
        return True, field.default_factory()
    return True, None


def config_reference() -> str:
    from omegaconf import OmegaConf

    from effdetseg.configs import schema

    base = resources.files("effdetseg.configs")
    train_text = (base / "train.yaml").read_text()
    train_yaml = OmegaConf.to_container(OmegaConf.create(train_text), resolve=False)
    lines = [
        "## Training keys (`train.yaml`)",
        "",
        "The value is the one in `train.yaml`; `${…}` is an interpolation. A recipe (below) changes some",
        "of them for its data preset.",
        "",
        "| key | type | value in train.yaml | what |",
        "|---|---|---|---|",
    ]
    lines += _schema_rows(schema.TrainConfig, "", train_yaml, yaml_comments(train_text), skip=("data",))

    raw = {name: text for name, text in _config_files("data")}
    presets = [(name, text, *_preset_tree(name, raw)) for name, text in raw.items()]
    presets.sort(key=lambda p: (p[0] != "synthetic", p[0]))
    names = [p[0] for p in presets]
    formats = {name: tree.get("format") or name for name, _, tree, _ in presets}

    # A key's description: the schema's comment, else folder.yaml's (the preset for your own data),
    # else the first preset's that has one.
    comments: dict[str, str] = {}
    for _, text, _, _ in sorted(presets, key=lambda p: p[0] != "folder"):
        for key, comment in yaml_comments(text).items():
            comments.setdefault(key, comment)
    lines += [
        "",
        "## Data keys (`data=PRESET`)",
        "",
        "Every data preset is a file under `configs/data/`; the schema of its format says which keys it",
        "takes. Values per preset (`—`: the format has no such key; `${.x}`: the same node's `x`):",
        "",
        "| key | type | " + " | ".join(f"`{n}`" for n in names) + " | what |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    seen: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        own = _schema_comments(cls)
        for f in dataclasses.fields(cls):
            path, hint = prefix + f.name, hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, path + ".")
            elif path not in seen:
                seen[path] = _type_text(hint, str(f.type))
                if own.get(f.name):
                    comments[path] = own[f.name]

    for name in names:
        walk(schema.DATA_SCHEMAS[formats[name]], "")
    for path, type_text in seen.items():
        cells = []
        for name, _, tree, defaults in presets:
            found, default = _schema_default(schema.DATA_SCHEMAS[formats[name]], path)
            present, value = _get(tree, path)
            if not found:
                cells.append("—")
            elif path == "augmentation.train" and not present:
                cells.append(f"preset `{defaults.get('augmentation', '—')}`")
            else:
                cells.append(_value_text(value if present else default))
        lines.append(f"| `data.{path}` | {type_text} | " + " | ".join(cells) + f" | {_cell(comments.get(path, ''))} |")

    lines += [
        "",
        "## Recipes (`configs/recipe/`)",
        "",
        "After `train.yaml`, `configs/recipe/<data preset>.yaml` (when it exists) sets that preset's tuned",
        "defaults; the command line still wins. As they are on disk:",
        "",
    ]
    for name, text in _config_files("recipe"):
        lines += [f"### `recipe/{name}.yaml` (with `data={name}`)", "", "```yaml", text.rstrip(), "```", ""]
    lines += [
        "## Augmentation presets (`data/augmentation=PRESET`)",
        "",
        "Albumentations pipelines; normalization is always added last, from `data.normalize`.",
        "",
    ]
    for name, text in _config_files("data/augmentation"):
        lines += [f"??? note \"`{name}`\"", "", "    ```yaml"]
        lines += [("    " + line).rstrip() for line in text.rstrip().splitlines()]
        lines += ["    ```", ""]
    lines += ["## Data presets as files", ""]
    for name, text, _, _ in presets:
        lines += [f"??? note \"`data/{name}.yaml`\"", "", "    ```yaml"]
        lines += [("    " + line).rstrip() for line in text.rstrip().splitlines()]
        lines += ["    ```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- hooks


def zoo_table() -> str:
    from effdetseg.commands.models import README_END, README_START

    text = (ROOT / "README.md").read_text()
    return text[text.index(README_START) + len(README_START) : text.index(README_END)].strip()


def camvid_command() -> str:
    """The README's CamVid lines (the comment starting ``# CamVid`` and the commands under it), which
    ``benchmarks/readme_commands.py`` reads and the quality benchmark runs."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# CamVid"))
    end = start + 1
    while end < len(lines) and lines[end].strip() and not lines[end].startswith("```"):
        end += 1
    return "```bash\n" + "\n".join(lines[start:end]) + "\n```"


GENERATED = {"cli": cli_reference, "config": config_reference, "zoo": zoo_table, "camvid": camvid_command}


def _generated_block(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- generated:{name}:start -->.*?<!-- generated:{name}:end -->", re.S)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill each ``<!-- generated:NAME:start -->`` … ``<!-- generated:NAME:end -->`` block of a page
    (in the repository it holds a placeholder line) with what ``GENERATED[NAME]`` makes now."""
    for name, make in GENERATED.items():
        pattern = _generated_block(name)
        if pattern.search(markdown):
            text = make()
            markdown = pattern.sub(lambda _: text, markdown)
    return markdown
