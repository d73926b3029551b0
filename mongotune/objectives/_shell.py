"""Where a command template's placeholders meet a shell, and how a value is quoted there.

A command runs without a shell; a template that wants one says so itself.
Every form that hands a script to a POSIX shell is found wherever the shell's
word stands in the template, behind any wrapper: ``sh -c S``,
``bash -o pipefail -c S``, ``env sh -c S``, ``timeout 60 bash -c S``,
``nice -n 5 sh -lc S``, ``docker exec box sh -c S``.  The shell's own option
grammar is followed (``-o NAME``, ``+O NAME``, ``--rcfile FILE``, clusters
such as ``-euo pipefail``, ``-c`` anywhere among the options): the script is
the first argument after the options.

Inside such a script a value is quoted for the place its placeholder holds:

* outside quotes: ``shlex.quote`` (one word; nothing in it expands);
* inside ``'...'``: each ``'`` of the value becomes ``'\\''``;
* inside ``"..."``: ``\\``, ``$``, backquote and ``"`` get a backslash.

A placeholder anywhere else (inside ``$(...)``, backquotes, ``${...}``,
arithmetic, ``$'...'``, a comment, right after a backslash, in or after a
here-document) is refused: the caller says how to pass the value instead (as
an argument of the script: ``sh -c '... "$1"' sh {x}``).

Forms that run a string through a shell whose quoting this module does not
know are refused when that string holds a placeholder: ``env -S STRING``,
``flock``/``su``/``runuser``/``script -c STRING``, everything after ``watch``
or ``ssh``, and the ``-c`` command of fish, csh, tcsh and other non-POSIX
shells.
"""

from __future__ import annotations

import os
import re
import shlex

MARK = "\x00"  # stands for a placeholder in a script (no argv element can hold a NUL)
WORD, SINGLE, DOUBLE = "word", "single", "double"
QUOTABLE = (WORD, SINGLE, DOUBLE)

POSIX_SHELLS = frozenset({"sh", "bash", "rbash", "dash", "ash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh",
                          "yash", "posh"})
OTHER_SHELLS = frozenset({"fish", "csh", "tcsh", "pwsh", "powershell", "nu", "elvish", "xonsh"})
# programs that hand the value of one of their options to a shell as one string
_STRING_OPTIONS = {"env": ("-S", "--split-string"), "flock": ("-c", "--command"), "su": ("-c", "--command"),
                   "runuser": ("-c", "--command"), "script": ("-c", "--command")}
# programs that join every later argument into one string for a shell
_WHOLE_TAIL = {"watch": "watch runs its command as one string through sh -c",
               "ssh": "ssh hands its command to the remote host's shell as one string"}
_LONG_WITH_VALUE = ("--rcfile", "--init-file")
_HOLDERS = {"$(": "$(...)", "$((": "$((...))", "((": "((...))", "${": "${...}", "`": "backquotes",
            "$'": "$'...'"}


def script_index(argv: list[str], shell_at: int) -> int | None:
    """Index of the script when ``argv[shell_at]`` is a POSIX shell run with ``-c``; else None."""
    has_c = False
    i = shell_at + 1
    while i < len(argv):
        a = argv[i]
        if a in ("--", "-"):
            i += 1
            break
        if a.startswith("--"):
            i += 2 if a in _LONG_WITH_VALUE else 1
            continue
        if len(a) > 1 and a[0] in "-+":
            letters = a[1:]
            has_c = has_c or (a[0] == "-" and "c" in letters)
            i += 1 + sum(1 for ch in letters if ch in "oO")  # -o NAME, -O NAME take the next argument
            continue
        break
    return i if has_c and i < len(argv) else None


def _option_values(argv: list[str], start: int, options: tuple[str, ...]) -> list[int]:
    """Indexes of the values of ``options`` (``-c X``, ``-cX``, ``--command X``, ``--command=X``) after ``start``."""
    found = []
    for i in range(start + 1, len(argv)):
        a = argv[i]
        for opt in options:
            if a == opt and i + 1 < len(argv):
                found.append(i + 1)
            elif a.startswith(opt + "=") or (not opt.startswith("--") and a.startswith(opt) and len(a) > len(opt)):
                found.append(i)
    return found


def forms(argv: list[str]) -> dict[int, tuple[str, str]]:
    """The arguments of a template that reach a shell.

    ``{index: ("script", SHELL)}`` for the script of a POSIX shell (values are
    quoted in it), ``{index: ("refuse", WHY)}`` for a string that a program runs
    through a shell this module cannot quote for.
    """
    found: dict[int, tuple[str, str]] = {}
    for j, word in enumerate(argv):
        prog = os.path.basename(word)
        if prog in POSIX_SHELLS:
            k = script_index(argv, j)
            if k is not None:
                found.setdefault(k, ("script", prog))
        elif prog in OTHER_SHELLS:
            for k in _option_values(argv, j, ("-c", "--command", "-Command")):
                found.setdefault(k, ("refuse", f"{prog} -c runs a {prog} script, whose quoting mongotune "
                                               "does not write"))
        elif prog in _STRING_OPTIONS:
            opts = _STRING_OPTIONS[prog]
            why = (f"{prog} -c runs its string through a shell" if prog != "env"
                   else "env -S splits its string as a shell does")
            for k in _option_values(argv, j, opts):
                found.setdefault(k, ("refuse", why))
        elif prog in _WHOLE_TAIL:
            for k in range(j + 1, len(argv)):
                found.setdefault(k, ("refuse", _WHOLE_TAIL[prog]))
    return found


def _context(stack: list[str]) -> str:
    inner = [s for s in stack if s != "("]  # a subshell is parsed like the top level
    if not inner:
        return WORD
    if inner == ["'"]:
        return SINGLE
    if inner == ['"']:
        return DOUBLE
    holder = next((s for s in inner if s not in ("'", '"')), inner[-1])
    return "inside " + _HOLDERS.get(holder, holder)


class _Lexer:
    """Just enough of a POSIX shell's lexical rules to tell where each MARK of a script stands.

    Whatever it cannot follow safely (a here-document, a ``case`` inside
    ``$(...)``) makes every later MARK refused: it errs on the side of refusing.
    """

    def __init__(self, script: str):
        self.s, self.i = script, 0
        self.stack: list[str] = []
        self.found: list[str] = []
        self.gone: str | None = None  # once set, every later placeholder is refused for this reason
        self.word_start = True

    def run(self) -> list[str]:
        while self.i < len(self.s):
            self.step()
        return self.found

    def mark(self, where: str) -> None:
        self.found.append(self.gone or where)

    def step(self) -> None:
        s, i = self.s, self.i
        c, top = s[i], (self.stack[-1] if self.stack else None)
        two, three = s[i:i + 2], s[i:i + 3]
        if c == MARK:
            self.mark(_context(self.stack))
            self.i, self.word_start = i + 1, False
        elif top in ("'", "$'", "`") and not (c == "\\" and top != "'"):
            if c == top[-1]:
                self.stack.pop()
            self.i += 1
        elif c == "\\":
            if s[i + 1:i + 2] == MARK:
                self.mark("right after a backslash")
            self.i, self.word_start = i + 2, False
        elif three == "$((" or two in ("$(", "${") or c == "`":
            opener = three if three == "$((" else (c if c == "`" else two)
            self.stack.append(opener)
            self.i, self.word_start = i + len(opener), True
        elif top == '"':
            if c == '"':
                self.stack.pop()
            self.i += 1
        else:
            self.code(c, two, three, top)

    def code(self, c: str, two: str, three: str, top: str | None) -> None:
        """One step at the top level or inside (...), $(...), ${...} or arithmetic."""
        s, i = self.s, self.i
        step, word_start = 1, c in " \t\n;&|()<>"
        if two in ("$'", '$"'):
            self.stack.append("$'" if two == "$'" else '"')
            step = 2
        elif c in "'\"":
            self.stack.append(c)
        elif top in ("$((", "((") and two == "))":
            self.stack.pop()
            step = 2
        elif top == "${" and c == "}":
            self.stack.pop()
        elif two == "((" and top not in ("$((", "(("):
            self.stack.append("((")
            step = 2
        elif c == "(":
            self.stack.append("(")
        elif c == ")" and top in ("(", "$("):
            self.stack.pop()
        elif three == "<<<":
            step = 3
        elif two == "<<":
            self.gone = self.gone or "in or after a here-document (<<)"
            step = 2
        elif c == "#" and self.word_start:
            end = s.find("\n", i)
            end = len(s) if end < 0 else end
            for _ in range(s.count(MARK, i, end)):
                self.mark("in a comment")
            step = end - i
        elif (self.word_start and "$(" in self.stack and re.match(r"case\b", s[i:i + 5])):
            self.gone = self.gone or "after a case statement inside $(...)"
        self.i, self.word_start = i + max(1, step), word_start


def contexts(script: str) -> list[str]:
    """Where each MARK of ``script`` stands: WORD, SINGLE or DOUBLE (quotable), or what holds it."""
    return _Lexer(script).run()


def quote(text: str, context: str) -> str:
    """``text`` written so that the shell reads it back as it is, at a place of this ``context``."""
    if context == WORD:
        return shlex.quote(text)
    if context == SINGLE:
        return text.replace("'", "'\\''")
    if context == DOUBLE:
        return re.sub(r'([\\$`"])', r"\\\1", text)
    raise ValueError(f"a value cannot be quoted {context}")
