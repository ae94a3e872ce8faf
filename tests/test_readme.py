"""The README's command reference lists exactly the options `--help` shows, with the same
choices, so neither can change without the other."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from detcompress.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> dict[str, object]:
    """'compress' -> its command, 'init demo' -> that subcommand, '' -> the root."""
    root = typer.main.get_command(app)
    found: dict[str, object] = {"": root}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        found[name] = command
        for sub_name, sub in getattr(command, "commands", {}).items():
            found[f"{name} {sub_name}"] = sub
    return found


def _reference() -> dict[str, list[str]]:
    """'compress' -> the first column of each row of its table in the README."""
    text = README.read_text()
    section = text.split("## Command reference", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[str]] = {}
    for block in re.split(r"\n### ", section)[1:]:
        heading, _, body = block.partition("\n")
        words = heading.strip("`").split()[1:]
        name = " ".join(w for w in words if w.islower() and w.isalpha())
        rows = [line.split(" | ")[0] for line in body.splitlines() if line.startswith("| `")]
        tables[name] = rows
    return tables


def _options(command: object) -> dict[str, object]:
    options: dict[str, object] = {}
    for param in command.params:  # type: ignore[attr-defined]
        if param.param_type_name == "option" and param.name != "help":
            for opt in param.opts + param.secondary_opts:
                options[opt] = param
    return options


def test_every_command_has_a_reference_table_and_nothing_else_does() -> None:
    commands = {name for name, command in _commands().items() if name and _options(command)}
    assert set(_reference()) == commands


def test_reference_lists_exactly_the_options_of_each_command_with_their_choices() -> None:
    commands = _commands()
    for name, rows in _reference().items():
        options = _options(commands[name])
        documented = {opt for row in rows for opt in re.findall(r"(?<![\w-])--?[a-z][\w-]*", row)}
        assert documented == set(options), name
        for row in rows:
            for opt in re.findall(r"(?<![\w-])--[a-z][\w-]*", row):
                metavar = options[opt].metavar  # type: ignore[attr-defined]
                if metavar and "|" in metavar:  # choices: the README names the same ones
                    assert f"{opt} {metavar.replace('|', chr(92) + '|')}" in row, (name, row)


def test_global_options_are_described() -> None:
    text = README.read_text().split("## Command reference", 1)[1].split("\n### ", 1)[0]
    for opt in _options(_commands()[""]):
        assert f"`{opt}`" in text, opt
