"""The docs work: every relative link in README.md, docs/*.md and benchmarks/README.md resolves (file and #anchor),
every `python train.py|eval.py ...` command in their fenced code blocks composes with Hydra, and every
`lmlab-report ...` line parses with the report's argument parser."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from lmlab.config import config_dir, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Floors: an extraction bug that finds nothing (or little) must fail, not pass vacuously.
MIN_DOC_PAGES = 8
MIN_LINKS = 40
MIN_ANCHOR_LINKS = 15
MIN_COMMANDS = 40
MIN_REPORT_LINES = 5

# Placeholders in documented commands, filled before composing/parsing. The run and sweep dirs are made (empty)
# under tmp_path so a `ckpt_path=` points at a path that exists. Any `<...>` left unfilled fails the test, so a new
# placeholder in the docs needs a row here.
PLACEHOLDERS = {
    "logs/train/runs/<run>": "{run_dir}",
    "<that dir>": "{sweep_dir}",
    "<sweep dir>": "{sweep_dir}",
}

_FENCE = re.compile(r"^\s*```")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _text_outside_code(path: Path) -> list[str]:
    """The page's lines with fenced code blocks and inline code blanked out (links there are not links)."""
    out, in_code = [], False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            out.append("")
            continue
        out.append("" if in_code else re.sub(r"`[^`]*`", "``", line))
    return out


def _code_lines(path: Path) -> list[str]:
    """The lines of every fenced code block, `\\` continuations joined."""
    lines, in_code, pending = [], False, ""
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            continue
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links() -> list[tuple[Path, str]]:
    links = []
    for page in DOCS:
        for line in _text_outside_code(page):
            for target in _LINK.findall(line):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                    links.append((page, target))
    return links


def test_the_docs_pages_exist() -> None:
    assert len(DOCS) >= MIN_DOC_PAGES, DOCS
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_github_slug() -> None:
    assert github_slug("Language models (`task=causal_lm`)") == "language-models-taskcausal_lm"
    assert github_slug("Masked LM and the pretrain→finetune chain") == "masked-lm-and-the-pretrainfinetune-chain"
    assert github_slug("SLURM (`hydra/launcher=slurm`)") == "slurm-hydralauncherslurm"
    assert github_slug("`make bench`: measured (2026-11-29)") == "make-bench-measured-2026-11-29"


def test_every_relative_link_resolves() -> None:
    links = relative_links()
    assert len(links) >= MIN_LINKS, f"only {len(links)} relative links found: is the link pattern broken?"
    assert sum("#" in target for _, target in links) >= MIN_ANCHOR_LINKS
    broken = []
    for page, target in links:
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no heading with that anchor in {dest.name})")
    assert not broken, "\n".join(broken)


def _argv(line: str) -> list[str]:
    argv = shlex.split(line, comments=True)
    while argv and _ENV.match(argv[0]):  # VAR=value python train.py ...
        argv = argv[1:]
    return argv


def documented_commands(tmp_path: Path | None = None) -> list[tuple[Path, str, list[str]]]:
    """(page, line, argv) of every fenced `python train.py|eval.py ...` and `lmlab-report ...` line; with
    `tmp_path`, argv has the placeholders filled (see PLACEHOLDERS)."""
    found = []
    for page in DOCS:
        for line in _code_lines(page):
            try:
                argv = _argv(line)
            except ValueError:
                continue  # not a shell line (a Python snippet)
            if argv[:2] in (["python", "train.py"], ["python", "eval.py"]) or argv[:1] == ["lmlab-report"]:
                found.append((page, line, _argv(_fill(line, tmp_path)) if tmp_path else argv))
    return found


def _fill(line: str, tmp_path: Path) -> str:
    run_dir = tmp_path / "logs" / "train" / "runs" / "2026-12-01_00-00-00-000000"
    sweep_dir = tmp_path / "logs" / "sweeps" / "s1"
    for d in (run_dir, sweep_dir):
        d.mkdir(parents=True, exist_ok=True)
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value.format(run_dir=run_dir, sweep_dir=sweep_dir))
    command = line.split(" #")[0]
    assert not re.search(r"<[^<>]+>", command), f"unfilled placeholder in {line!r}: add it to PLACEHOLDERS"
    return line


def hydra_overrides(args: list[str]) -> list[str]:
    """The overrides one job of the command composes: flags (-m, --cfg job) dropped, a sweep (`a=1,2`) reduced to
    its first value (composition checks the key and the value's type; the others are the same key)."""
    plain, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--cfg", "-c", "--package", "-p"):
            skip = True
        elif not arg.startswith("-"):
            plain.append(arg)
    out = []
    for override, text in zip(OverridesParser.create().parse_overrides(plain), plain, strict=True):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def test_every_documented_train_and_eval_command_composes(tmp_path: Path) -> None:
    commands = [(p, line, argv) for p, line, argv in documented_commands(tmp_path) if argv[0] == "python"]
    assert len(commands) >= MIN_COMMANDS, f"only {len(commands)} train/eval commands found in the docs"
    register_resolvers()
    failures = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for page, line, argv in commands:
            config_name = argv[1].removesuffix(".py")
            overrides = hydra_overrides(argv[2:])
            try:
                cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
                assert cfg.get("seed") is not None
            except Exception as err:  # noqa: BLE001 - every failure is reported with its command
                failures.append(f"{page.relative_to(ROOT)}: {line}\n    -> {type(err).__name__}: {err}")
    GlobalHydra.instance().clear()
    assert not failures, "\n".join(failures)


def test_readme_quickstart_commands_run_with_cfg_job(tmp_path: Path) -> None:
    """The README's own commands through the real entry points (argument checks and all), `--cfg job` appended."""
    commands = [
        (line, argv)
        for page, line, argv in documented_commands(tmp_path)
        if page.name == "README.md" and page.parent == ROOT and argv[0] == "python"
    ]
    assert len(commands) >= 10, commands
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    failures = []
    for line, argv in commands:
        args = hydra_overrides(argv[2:])
        proc = subprocess.run(
            [sys.executable, str(ROOT / argv[1]), *args, "--cfg", "job"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if proc.returncode != 0 or "seed:" not in proc.stdout:
            failures.append(f"{line}\n    -> exit {proc.returncode}: {proc.stderr.strip()[-600:]}")
    assert not failures, "\n".join(failures)


def test_every_documented_lmlab_report_line_parses(tmp_path: Path) -> None:
    from lmlab.report.cli import build_parser

    lines = [(page, line, argv) for page, line, argv in documented_commands(tmp_path) if argv[0] == "lmlab-report"]
    assert len(lines) >= MIN_REPORT_LINES, f"only {len(lines)} lmlab-report lines found in the docs"
    parser = build_parser()
    failures = []
    for page, line, argv in lines:
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            failures.append(f"{page.relative_to(ROOT)}: {line}")
            continue
        assert vars(args), line
    assert not failures, "lmlab-report cannot parse:\n" + "\n".join(failures)


@pytest.mark.parametrize("args", [["--no-such-flag"], ["logs/x", "--ci", "nonsense"]])
def test_the_report_parser_refuses_bad_lines(args: list[str]) -> None:
    """The parse check above can fail: the parser does reject what it does not know."""
    from lmlab.report.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(args)
