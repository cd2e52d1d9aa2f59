"""README.md and docs/*.md, kept true (docs/development.md, "The docs' own test", says the same).

- A ```console block is run: each line starting with ``$ `` is a command (a line ending in ``\\``
  continues it), run by bash in a scratch copy of the repository with a HOME of its own, no
  MLflow server and no cluster; a page's commands run in order in one shell, so ``cd`` carries.
  Each exits 0, or the code a trailing ``# exit N`` states; the lines under a command are output
  it prints (each, stripped, somewhere in what it printed).
- A ```sh (or ```bash) block is not run; every ``ferry`` command in it, and in console blocks, is
  parsed by the real command line (an existing command, options it has, values of their type),
  and every inline `ferry ...` of the prose names an existing command and only its options.
- Every relative link names a file that exists, and a ``#fragment`` one of its headings.
- README.md is a first page: at most 250 lines, opening with ``make demo`` and ``make test``,
  linking every page of docs/. docs/cli.md names every command and option and every exit code;
  docs/configuration.md every setting of ferry/settings.py.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
EXPECTED_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
# A markdown link, not an image's; the target up to the first space or ')'.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")"}
REDIRECTIONS = {">", ">>", "<", "2>", "&>", ">&", "2>&1", "<<", "<<<"}
# Copying the checkout for the console blocks leaves out what is local, large or generated.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", ".ferry", "__pycache__", "*.egg-info", ".pytest_cache",
                                    "build", "dist", "mlruns")


def rel(page: Path) -> str:
    return str(page.relative_to(REPO))


# ---- reading the pages ----------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    lines: list[str]


@dataclass
class Command:
    text: str  # as bash gets it (continuations kept)
    line: int
    expect: int = 0
    output: list[str] = field(default_factory=list)


def split_page(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page, and its prose lines (fenced lines blanked, numbers kept)."""
    blocks, prose = [], []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            blocks.append(Block(match.group(2).lower(), number, []))
            prose.append("")
        elif fence is not None and line.strip() == fence:
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1].lines.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, "a code fence is never closed"
    return blocks, prose


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    lines = iter(enumerate(block.lines, start=block.line + 1))
    for number, line in lines:
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\"):
                text += "\n" + next(lines)[1]
            expect = EXPECTED_EXIT.search(text)
            commands.append(Command(text, number, int(expect.group(1)) if expect else 0))
        elif commands and line.strip() and line.strip() != "...":
            commands[-1].output.append(line.strip())
        elif not commands and line.strip():
            raise AssertionError(f"line {number}: a console block starts with a `$ ` command")
    return commands


def page_blocks(page: Path) -> list[Block]:
    return split_page(page.read_text())[0]


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """The commands of a block, continuations joined: (line, text)."""
    out, pending, start = [], "", 0
    for number, line in enumerate(block.lines, start=block.line + 1):
        if block.lang == "console":
            if not pending and not line.startswith("$ "):
                continue
            line = line[2:] if not pending else line
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending, start = "", 0
    return out


def ferry_invocations(command: str) -> list[list[str]]:
    """Each ``ferry ...`` in a shell command line, as its arguments after ``ferry``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise AssertionError(f"cannot split {command!r}: {exc}") from exc
    segments: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in SHELL_OPERATORS:
            segments.append([])
        elif token in REDIRECTIONS or re.fullmatch(r"\d?[<>]+&?\d?", token):
            skip_next = not token.endswith(("&1", "&2"))
        else:
            segments[-1].append(token)
    found = []
    for words in segments:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # FOO=bar ferry ...
        if words and words[0] == "ferry":
            found.append(words[1:])
    return found


# ---- the real command line ------------------------------------------------------------------


@functools.cache
def _cli():
    import typer

    from ferry.cli import app

    return typer.main.get_command(app)


def _usage_error() -> type[Exception]:
    try:
        from typer._click.exceptions import UsageError  # typer that carries its own click
    except ImportError:  # pragma: no cover - typer on the click package
        from click.exceptions import UsageError
    return UsageError


def all_commands(cmd=None, path=()):  # type: ignore[no-untyped-def]
    """(path, command) for every leaf command of ``ferry``."""
    cmd = cmd or _cli()
    if hasattr(cmd, "commands"):
        for name in cmd.list_commands(None):
            yield from all_commands(cmd.commands[name], (*path, name))
    else:
        yield path, cmd


def _option_names(cmd, hidden: bool = False) -> set[str]:  # type: ignore[no-untyped-def]
    """A command's option names; ``hidden``: only those of its hidden options (old spellings)."""
    names = set() if hidden else {"-h", "--help"}
    for param in cmd.params:
        if param.param_type_name == "option" and bool(getattr(param, "hidden", False)) == hidden:
            names.update(param.opts, param.secondary_opts)
    return names


def _old_spellings(cmd, args: list[str]) -> str | None:  # type: ignore[no-untyped-def]
    old = [a for a in args if a.split("=")[0] in _option_names(cmd, hidden=True)]
    return f"{', '.join(old)}: an old spelling the help no longer shows; use the current one" if old else None


def _resolve(args: list[str]):  # type: ignore[no-untyped-def]
    """The command ``ferry ARGS`` names and the arguments left for it, or why none."""
    cmd, path, i = _cli(), [], 0
    while hasattr(cmd, "commands"):
        if i == len(args):
            return cmd, None
        if args[i].startswith("-"):  # --version, -h, --install-completion: the group's own, then done
            known = args[i].split("=")[0] in _option_names(cmd)
            return (cmd, None) if known else (None, f"ferry {' '.join(path)}: no option {args[i]}".replace("  ", " "))
        if args[i] not in cmd.commands:
            return None, f"ferry {' '.join([*path, args[i]])}: no such command (have: {', '.join(cmd.commands)})"
        cmd, path, i = cmd.commands[args[i]], [*path, args[i]], i + 1
    return cmd, (path, args[i:])


def check_strictly(args: list[str]) -> str | None:
    """Why ``ferry ARGS`` would not parse, or None: the real parser, types and required values."""
    import typer

    cmd, rest = _resolve(args)
    if cmd is None:
        return rest
    if rest is None:
        return None
    path, left = rest
    if problem := _old_spellings(cmd, left):
        return f"ferry {' '.join(path)}: {problem}"
    root = _cli()
    parent = root.context_class(root, info_name="ferry", **root.context_settings)
    try:
        cmd.make_context(" ".join(path), list(left), parent=parent)
    except typer.Exit:
        return None  # -h
    except _usage_error() as exc:
        return f"ferry {' '.join(args)}: {exc.format_message()}"
    return None


def check_names(args: list[str]) -> str | None:
    """Why an inline ``ferry ARGS`` (a synopsis, a fragment) is wrong: its command or an option's name."""
    args = [a.removesuffix("...").strip("[]") for a in args]
    cmd, rest = _resolve([a for a in args if a])
    if cmd is None:
        return rest
    if rest is None:
        return None
    path, left = rest
    if problem := _old_spellings(cmd, left):
        return f"ferry {' '.join(path)}: {problem}"
    known = _option_names(cmd)
    unknown = [a for a in left if a.startswith("-") and a != "-" and a.split("=")[0] not in known]
    return f"ferry {' '.join(path)}: no option {', '.join(unknown)}" if unknown else None


# ---- running console blocks -----------------------------------------------------------------


def _sandbox_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FERRY_", "MLFLOW_", "AWS_", "KUBERNETES_")) and k != "KUBECONFIG"}
    bindir = str(Path(sys.executable).parent)
    env.update(HOME=str(home), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", COLUMNS="100", NO_COLOR="1",
               TERM="dumb", PYTHONDONTWRITEBYTECODE="1", GIT_CONFIG_NOSYSTEM="1")
    return env


def _script(commands: list[Command], outdir: Path) -> str:
    lines = ["set -o pipefail"]
    for i, command in enumerate(commands):
        lines += [
            "{ " + command.text,
            f"}} > {outdir}/{i}.out 2>&1 < /dev/null",
            f"echo $? > {outdir}/{i}.rc",
            f'[ "$(cat {outdir}/{i}.rc)" = "{command.expect}" ] || exit 0',
        ]
    return "\n".join(lines) + "\n"


CONSOLE_PAGES = [p for p in PAGES if any(b.lang == "console" for b in page_blocks(p))]


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=rel)
def test_console_blocks_run(page: Path, tmp_path: Path) -> None:
    commands = [c for b in page_blocks(page) if b.lang == "console" for c in console_commands(b)]
    assert commands, f"{rel(page)}: a console block without a `$ ` command"
    work, home, outdir = tmp_path / "repo", tmp_path / "home", tmp_path / "out"
    shutil.copytree(REPO, work, ignore=NOT_COPIED)
    home.mkdir()
    outdir.mkdir()
    script = tmp_path / "page.sh"
    script.write_text(_script(commands, outdir))
    subprocess.run(["bash", str(script)], cwd=work, env=_sandbox_env(home), timeout=300, check=False,
                   stdin=subprocess.DEVNULL)
    for i, command in enumerate(commands):
        where = f"{rel(page)} line {command.line}: $ {command.text}"
        rc_file = outdir / f"{i}.rc"
        assert rc_file.exists(), f"{where}: never ran"
        printed = (outdir / f"{i}.out").read_text(errors="replace")
        tail = "\n".join(printed.splitlines()[-25:])
        if int(rc_file.read_text()) != command.expect:
            pytest.fail(f"{where}\nexited {rc_file.read_text().strip()}, the page says {command.expect}; it printed:\n{tail}")
        flat = " ".join(printed.split())
        for shown in command.output:
            if " ".join(shown.split()) not in flat:
                pytest.fail(f"{where}\ndid not print {shown!r}; it printed:\n{tail}")


# ---- what every page must hold ---------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_ferry_command_exists_with_its_options(page: Path) -> None:
    blocks, prose = split_page(page.read_text())
    wrong = []
    for block in blocks:
        if block.lang in ("sh", "bash", "console", "shell"):
            for number, command in shell_commands(block):
                for args in ferry_invocations(command):
                    if problem := check_strictly(args):
                        wrong.append(f"line {number}: {problem}")
    for number, line in enumerate(prose, start=1):
        for match in INLINE_CODE.finditer(line):
            if re.match(r"ferry\s", match.group(2).strip()):
                for args in ferry_invocations(match.group(2).strip()):
                    if problem := check_names(args):
                        wrong.append(f"line {number}: `{match.group(2).strip()}`: {problem}")
    assert not wrong, f"{rel(page)}:\n" + "\n".join(wrong)


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    _, prose = split_page(page.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose:
        if match := re.match(r"^#{1,6}\s+(.+?)\s*#*$", line):
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_to_files_and_headings(page: Path) -> None:
    _, prose = split_page(page.read_text())
    broken = []
    for number, line in enumerate(prose, start=1):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"line {number}: {target}: no {resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved}")
            elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
                broken.append(f"line {number}: {target}: no heading #{fragment} in {rel(resolved)}")
    assert not broken, f"{rel(page)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_python_blocks_compile(page: Path) -> None:
    for block in page_blocks(page):
        if block.lang == "python":
            try:
                compile("\n".join(block.lines), f"{rel(page)}:{block.line}", "exec")
            except SyntaxError as exc:
                raise AssertionError(f"{rel(page)}, the python block at line {block.line}: {exc}") from exc


def test_the_readme_is_a_first_page() -> None:
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/ (at most {README_MAX_LINES})"
    first = page_blocks(REPO / "README.md")[0]
    assert [line for line in lines[: first.line - 1] if line.strip()] == ["# Ferry"], "README.md opens with its two commands"
    assert [line.split("#")[0].strip() for line in first.lines] == ["make demo", "make test"]
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    assert not [rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked], "README.md links every page of docs/"


def _section(text: str, path: tuple[str, ...]) -> str | None:
    """The part of cli.md about ``ferry PATH``: its own heading's section, else the table row naming it."""
    name = " ".join(("ferry", *path))
    heading = re.search(rf"^#+ {re.escape(name)}\s*$", text, re.M)
    if heading:
        rest = text[heading.end():]
        end = re.search(r"^#+ ", rest, re.M)
        return rest[: end.start() if end else len(rest)]
    rows = [line for line in text.splitlines()
            if line.startswith("|") and re.search(rf"`{re.escape(name)}[` ]", line.split("|")[1])]
    return "\n".join(rows) or None


def test_the_cli_page_names_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = []
    for path, cmd in all_commands():
        section = _section(text, path)
        if section is None:
            missing.append(f"ferry {' '.join(path)}: no heading or table row")
            continue
        for param in cmd.params:
            shown = param.param_type_name == "option" and not getattr(param, "hidden", False)
            for opt in (*param.opts, *param.secondary_opts) if shown else ():
                if opt.startswith("--") and opt != "--help" and not re.search(rf"{re.escape(opt)}(?![\w-])", section):
                    missing.append(f"ferry {' '.join(path)}: {opt}")
    for opt in _option_names(_cli()) - {"-h", "--help"}:
        if opt not in text:
            missing.append(f"ferry: {opt}")
    assert not missing, "docs/cli.md does not name:\n" + "\n".join(missing)


def test_the_cli_page_lists_every_exit_code() -> None:
    from ferry import errors

    text = (DOCS / "cli.md").read_text()
    table = text[text.index("## Exit codes"):]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    codes = {0, 130}
    for name in errors.__all__:
        kind = getattr(errors, name)
        if isinstance(kind, type) and issubclass(kind, errors.FerryError):
            code = kind.__dict__.get("exit_code", kind.exit_code)
            codes.update({code} if isinstance(code, int) else set())
    codes.update({errors.Unreachable.exit_code})
    assert codes <= listed, f"docs/cli.md's exit codes lack {sorted(codes - listed)}"


def test_the_configuration_page_names_every_setting() -> None:
    from ferry import settings

    text = (DOCS / "configuration.md").read_text()
    names = [v.name for v in vars(settings).values() if isinstance(v, settings.EnvSetting)]
    assert names
    missing = [n for n in names if not re.search(rf"`{n}`", text)]
    assert not missing, "docs/configuration.md does not name " + ", ".join(missing)
