"""Every shell block the documentation marks runnable runs, as written, against `make run`'s poold.

A block is runnable when its fence's info string says so: a line "```sh runnable".
The blocks use the variables `make run` prints (PGPORT, POOLD_HTTP_PORT, POOLD_DIR,
POOLCTL_SOCKET), with .venv/bin on PATH, from the repository's root. This test starts
scripts/run_dev.py on free ports, takes those variables from the `export` line it
prints, runs each block with `sh -e` in the order the files hold them (README.md,
then docs/*.md by name), and requires exit status 0; then stops it with SIGINT, as
Ctrl-C does, and checks that it cleaned up.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import pgcluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(```+|~~~+)\s*(.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file whose info string holds the word "runnable"."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).split(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: code block never closed")
        i += 1
        if "runnable" in info:
            blocks.append(Block(path, start + 1, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in runnable_blocks(path)]


def test_the_documents_mark_their_commands() -> None:
    """The parser finds the blocks (a test over no block would pass for nothing)."""
    found = {block.path.name for block in BLOCKS}
    assert {"README.md", "operations.md", "quick-reference.md"} <= found, found


def test_the_parser_reads_fences_as_markdown_does(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```sh\nnot me\n```\n\n```sh runnable\necho one\n```\n~~~sh runnable\n```\necho two\n~~~\n")
    assert [(b.line, b.text) for b in runnable_blocks(doc)] == [(5, "echo one\n"), (8, "```\necho two\n")]


@dataclass
class DevPoold:
    env: dict[str, str]
    work: Path


@pytest.fixture(scope="module")
def dev_poold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPoold]:
    """scripts/run_dev.py (`make run`) on free ports, in a session of its own; Ctrl-C at the end."""
    port, http_port = pgcluster.free_port(), pgcluster.free_port()
    log = tmp_path_factory.mktemp("docs") / "run.log"
    env = dict(os.environ, POOLD_PORT=str(port), POOLD_HTTP_PORT=str(http_port))
    with log.open("wb") as out:
        run = subprocess.Popen([sys.executable, "scripts/run_dev.py"], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    work: Path | None = None
    try:
        wait_until(lambda: "Ctrl-C stops both" in log.read_text() or run.poll() is not None, timeout=90)
        text = log.read_text()
        assert run.poll() is None, text
        exports = [line.strip() for line in text.splitlines() if line.strip().startswith("export ")]
        assert len(exports) == 1, text
        printed = dict(word.split("=", 1) for word in shlex.split(exports[0])[1:])
        assert set(printed) == {"PGPORT", "POOLD_HTTP_PORT", "POOLD_DIR", "POOLCTL_SOCKET"}, printed
        assert printed["PGPORT"] == str(port) and printed["POOLD_HTTP_PORT"] == str(http_port)
        work = Path(printed["POOLD_DIR"])
        # A reader's shell: no libpq or poold settings of the machine's, no ~/.psqlrc.
        block_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POOLD_", "POOLCTL_"))}
        tools = [str(Path(sys.executable).parent), str(Path(pgcluster.client_tool("psql")).parent)]
        block_env.update(printed, PATH=os.pathsep.join([*tools, os.environ.get("PATH", "")]), PSQLRC="/dev/null")
        yield DevPoold(block_env, work)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: poold, then PostgreSQL, then the directory
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                time.sleep(0.5)
    assert run.returncode == 0, log.read_text()
    assert work is not None and not work.exists(), f"{work} left behind"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_runnable_block(block: Block, dev_poold: DevPoold) -> None:
    out = subprocess.run(["sh", "-e", "-c", block.text], cwd=ROOT, env=dev_poold.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (
        f"{block.name} exited {out.returncode}\n--- block\n{block.text}--- stdout\n{out.stdout}--- stderr\n{out.stderr}"
    )
