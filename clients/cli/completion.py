"""`agentgw completion bash|zsh|fish`: a shell completion script, drawn from the
argparse parser itself, so that it completes exactly the commands and options the
installed `agentgw` has.

The script is a table (command path -> the words that may follow) and a few lines
of shell that find the command path in the words typed so far; `words` builds the
table, and one function per shell prints it. zsh runs the bash script through
`bashcompinit`. No shell is run here and nothing is imported but argparse.
"""

from __future__ import annotations

import argparse
import shlex

from clients.cli.common import EXIT_OK, Commands

SHELLS = ("bash", "zsh", "fish")


def add_command(sub: Commands, root: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script for SHELL. bash: "
        "`source <(agentgw completion bash)` (or save it under "
        "/etc/bash_completion.d/); zsh: `source <(agentgw completion zsh)`; fish: "
        "`agentgw completion fish > ~/.config/fish/completions/agentgw.fish`.",
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(run=lambda args: _print_script(root, args.shell))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The commands right under `parser`, by name (aliases included)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse has no public way to walk its tree
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def words(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """Every command path ("", "holds", "holds list", ...) -> its subcommands, then
    its options."""
    children = subcommands(parser)
    options = [
        option
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        for option in action.option_strings
        if option.startswith("--")
    ]
    table = {path: [*children, *options]}
    for name, child in children.items():
        table |= words(child, f"{path} {name}".strip())
    return table


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = words(parser)
    return _fish(table) if shell == "fish" else _bash(table, zsh=shell == "zsh")


def _print_script(parser: argparse.ArgumentParser, shell: str) -> int:
    print(script(parser, shell), end="")
    return EXIT_OK


def _bash(table: dict[str, list[str]], zsh: bool) -> str:
    cases = "\n".join(
        f"        {shlex.quote(path or '-')}) choices={shlex.quote(' '.join(following))} ;;"
        for path, following in table.items()
    )
    head = "autoload -U +X bashcompinit && bashcompinit\n" if zsh else ""
    # zsh counts array elements from 1, and bashcompinit's COMP_CWORD from 0.
    first = 1 if zsh else 0
    return f"""# agentgw completion for {"zsh" if zsh else "bash"}, by `agentgw completion`
{head}_agentgw() {{
    local first={first}
    local cur="${{COMP_WORDS[COMP_CWORD + first]}}" cmd_path="" word i choices
    # The command path: each word that, appended, is still a command of agentgw.
    local commands={shlex.quote("|" + "|".join(p for p in table if p) + "|")}
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i + first]}}"
        if [[ "$commands" == *"|${{cmd_path:+$cmd_path }}$word|"* ]]; then
            cmd_path="${{cmd_path:+$cmd_path }}$word"
        fi
    done
    case "${{cmd_path:--}}" in
{cases}
        *) choices="" ;;
    esac
    COMPREPLY=($(compgen -W "$choices" -- "$cur"))
    if [[ ${{#COMPREPLY[@]}} -eq 0 && "$cur" != -* ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _agentgw agentgw
"""


def _fish(table: dict[str, list[str]]) -> str:
    commands = " ".join(shlex.quote(p) for p in table if p)
    lines = [
        "# agentgw completion for fish, by `agentgw completion`",
        "function __agentgw_path",
        f"    set -l commands {commands}",
        "    set -l path",
        "    for word in (commandline -opc)[2..-1]",
        '        set -l next (string join " " $path $word)',
        "        if contains -- $next $commands",
        "            set path $path $word",
        "        end",
        "    end",
        '    string join " " $path',
        "end",
        "function __agentgw_at",
        "    set -l path (__agentgw_path)",
        '    test "$path" = "$argv[1]"',
        "end",
        "complete -c agentgw -f",
    ]
    for path, following in table.items():
        condition = f"'__agentgw_at \"{path}\"'"  # command names need no quoting
        names = [w for w in following if not w.startswith("-")]
        options = [w.removeprefix("--") for w in following if w.startswith("--")]
        if names:
            lines.append(f"complete -c agentgw -n {condition} -a {shlex.quote(' '.join(names))}")
        for option in options:
            lines.append(f"complete -c agentgw -n {condition} -l {option}")
    return "\n".join(lines) + "\n"
