"""The documentation names only what exists: every relative link resolves (anchors
included), every repository path and every `csi-py` command or flag in a code block or
code span exists, every metric is documented, and install commands agree with the
scripts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from csi_py.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"),
               *(REPO / "charts" / "csi-py").glob("*.md")])
# Top-level entries of the repository: a word starting with one of these and a "/"
# names a repository path.
TOP = sorted(p.name for p in REPO.iterdir() if not p.name.startswith("."))
_PATH = re.compile(r"(?<![\w/.-])(?:\.\./)*(?:" + "|".join(re.escape(t) for t in TOP)
                   + r")/[\w./-]*")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`\n]+)`")


def _ids(path: Path) -> list[str]:
    return [str(p.relative_to(REPO)) for p in DOCS]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _code(text: str) -> tuple[list[str], list[str]]:
    """(lines of fenced code blocks, inline code spans outside them)."""
    blocks = [line for m in _FENCE.finditer(text) for line in m.group(1).splitlines()]
    spans = _SPAN.findall(_FENCE.sub("", text))
    return blocks, spans


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_links_resolve(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def _repo_paths(words: list[str]) -> list[str]:
    found = []
    for word in words:
        for match in _PATH.finditer(word):
            path = match.group(0).rstrip(".,:;)")
            if any(c in word for c in "<>*{}$") or "..." in path:
                continue  # a placeholder or a pattern, not a name
            if "/." in path.removeprefix("../"):
                continue  # a hidden directory a script generates (benchmarks/.work)
            found.append(path)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_files_named_in_code_exist(doc: Path) -> None:
    blocks, spans = _code(doc.read_text())
    missing = []
    for path in _repo_paths(blocks + spans):
        base = doc.parent if path.startswith("../") else REPO
        if not (base / path).resolve().exists():
            missing.append(path)
    assert not missing, f"{doc.name} names files that do not exist: {sorted(set(missing))}"


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def _check_csi_py(words: list[str]) -> str | None:
    """None if `csi-py WORDS...` names an existing command and only its flags; else why."""
    parser = build_parser()
    path = ["csi-py"]
    rest = list(words)
    while rest and rest[0] in _subparsers(parser):
        path.append(rest[0])
        parser = _subparsers(parser)[rest.pop(0)]
    if _subparsers(parser) and not any(w in ("-h", "--help", "--version") for w in words):
        return f"`{' '.join(path)}` needs a subcommand ({', '.join(_subparsers(parser))})"
    known = {opt for action in parser._actions for opt in action.option_strings}
    for word in rest:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag not in known and not flag.startswith("--)"):
            return f"`{' '.join(path)}` has no {flag}"
    return None


def _commands(lines: list[str]) -> list[list[str]]:
    """The csi-py invocations in shell lines ($ prompts, comments and env stripped)."""
    found = []
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip().removeprefix("$ ")
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part.replace("...", ""))
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if "csi-py" in words and words[0] in ("csi-py", "kubectl"):
                at = words.index("csi-py")
                # kubectl exec ... -- csi-py ...; a bare mention such as `csi-py serve`
                args = [w for w in words[at + 1:] if not w.startswith("[")]
                if args and (words[0] == "csi-py" or (at > 0 and words[at - 1] == "--")):
                    found.append(args)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_csi_py_commands_in_docs_exist(doc: Path) -> None:
    blocks, spans = _code(doc.read_text())
    problems = [f"{' '.join(words)}: {why}" for words in _commands(blocks + spans)
                if (why := _check_csi_py(words))]
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)


def test_the_checker_catches_a_wrong_command_and_path() -> None:
    assert _check_csi_py(["volume", "lst"]) is not None
    assert _check_csi_py(["volume", "list", "--bogus"]) is not None
    assert _check_csi_py(["volume", "list", "-o", "json"]) is None
    assert _commands(["$ kubectl exec p -- csi-py info --endpoint x"]) == [
        ["info", "--endpoint", "x"]]
    assert _repo_paths(["hack/nonexistent"]) == ["hack/nonexistent"]
    assert _repo_paths(["deploy/rbac/<sidecar>/"]) == []


def test_every_metric_is_documented() -> None:
    source = (REPO / "csi_py" / "observability" / "metrics.py").read_text()
    names = set(re.findall(r'"(csi_py_[a-z_]+)"', source))
    assert len(names) >= 9
    text = (REPO / "docs" / "metrics.md").read_text()
    counters = set(re.findall(r'Counter\("(csi_py_[a-z_]+)"', source))
    missing = [n for n in names if (f"`{n}_total`" if n in counters else f"`{n}`") not in text]
    assert not missing, f"docs/metrics.md lacks {missing}"


def test_go_tool_versions_agree_with_hack_setup() -> None:
    setup = (REPO / "hack" / "setup").read_text()
    pinned = dict(re.findall(r"go_tool \S+ (\S+)@(v[\d.]+)", setup))
    assert pinned, "hack/setup pins no Go tool"
    for doc in (REPO / "requirements-deploy.txt", REPO / "docs" / "deployment.md"):
        for module, version in re.findall(r"go install (\S+)@(v[\d.]+)", doc.read_text()):
            assert pinned.get(module) == version, f"{doc.name}: {module}@{version}"


def test_the_readme_sizes_are_the_filesystem_tables() -> None:
    """The README's smallest sizes are read off csi_py.linux.filesystems, the one
    place they are defined: a change there must change the README too."""
    from csi_py.linux.filesystems import FILESYSTEMS

    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| Size |"))
    named = dict(re.findall(r"\b(ext4|xfs|btrfs) (\d+) MiB", row))
    assert named == {name: str(fs.min_bytes >> 20) for name, fs in FILESYSTEMS.items()}
