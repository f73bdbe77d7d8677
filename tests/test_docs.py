"""The documentation: the site builds with ``mkdocs build --strict``; every built page loads in
headless Chromium with no broken image and no broken internal link (a screenshot of each); and
every shell or Python example on the site and in the README runs — or says why not.

The doc-test harness (how the pages mark their blocks: docs/about-the-docs.md):

- a ``yaml`` block whose first line is a comment naming a file (``# merge.yaml``) is written to
  that file in the page's scratch folder;
- ``bash``/``sh``/``console`` blocks run there in order, each in a fresh ``bash`` (``set -e``)
  with the venv's ``bin`` first on ``PATH``; ``python`` blocks in a fresh interpreter; each must
  exit 0;
- ``<!-- not run: REASON -->`` right before a block skips it (the reason may not be empty);
  ``<!-- same as docs/PAGE.md -->`` points at the page that runs the same block, and the page
  must hold it unmarked, with the same config files;
- every page's scratch folder is a copy of one made like Getting started's: two 3-step MiniLM
  adapters with their heads (``adapters/trec``, ``adapters/cola``), what docs/start.md's
  blocks write (the rows), and two random conv LoRAs of EfficientNet-Lite0 with heads
  (``adapters/sneaker``, ``adapters/sandal``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
SAME_AS = re.compile(r"^<!--\s*same as\s+(?P<page>\S+?)\s*-->$")
MARKER = re.compile(r"^<!--\s*(not run|same as)\b")
FILE_NAME = re.compile(r"^#\s*(?P<name>[\w./-]+\.ya?ml)(\s|$)")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)\s*(?P<lang>[\w+-]*)")
README_LINES = 250


# ---------------------------------------------------------------- reading the pages


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page, with the marker (if any) on the line before it."""

    page: str
    line: int
    lang: str
    text: str
    marker: str | None  # the HTML comment right before the fence

    @property
    def file_name(self) -> str | None:
        """The file a ``yaml`` block is written to (its first line: ``# name.yaml``)."""
        match = FILE_NAME.match(self.text.splitlines()[0]) if self.lang in ("yaml", "yml") and self.text else None
        return match.group("name") if match else None

    @property
    def runs(self) -> bool:
        return self.lang in SHELL | PYTHON

    @property
    def not_run(self) -> str | None:
        match = NOT_RUN.match(self.marker or "")
        return match.group("reason") if match else None

    @property
    def same_as(self) -> str | None:
        match = SAME_AS.match(self.marker or "")
        return match.group("page") if match else None

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str, text: str) -> list[Block]:
    """The fenced code blocks of a markdown page, in order."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, start = match.group("fence"), i
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(match.group("indent")) :])
            i += 1
        out.append(Block(page, start + 1, match.group("lang").lower(), "\n".join(body), previous if previous.startswith("<!--") else None))
        i += 1
    return out


def generator():
    """docs/gen_pages.py, imported (it writes nothing unless mkdocs-gen-files runs it)."""
    spec = importlib.util.spec_from_file_location("eigenmix_docs_gen_pages", DOCS / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    """Every markdown page that shows code: the README, docs/**.md and the generated pages."""
    found = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
    for path in sorted(DOCS.rglob("*.md")):
        found[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
    for path, content in generator().pages().items():
        if path.endswith(".md") and isinstance(content, str):
            found[f"docs/{path} (generated)"] = content
    return found


def page_blocks(pages: dict[str, str]) -> dict[str, list[Block]]:
    return {page: blocks(page, text) for page, text in pages.items()}


# ---------------------------------------------------------------- the marking rules (no model needed)


def test_every_example_runs_or_says_why_not(pages):
    """Shell and Python blocks are run, marked ``not run`` with a reason, or ``same as`` a page
    that runs the identical block with the identical config files; a marker sits only before a
    block it can apply to."""
    every = page_blocks(pages)
    problems = []
    for found in every.values():
        files = {b.file_name: b.text for b in found if b.file_name}
        for b in found:
            if b.marker and MARKER.match(b.marker) and not (b.not_run is not None or b.same_as):
                problems.append(f"{b.where()}: a marker it cannot read: {b.marker}")
            if not b.runs:
                if b.marker and MARKER.match(b.marker):
                    problems.append(f"{b.where()}: a '{b.lang}' block is never run; its marker says nothing")
                continue
            if b.not_run is not None and not b.not_run:
                problems.append(f"{b.where()}: 'not run' without a reason")
            if b.same_as:
                target = every.get(b.same_as)
                twins = [t for t in (target or []) if t.text == b.text and t.lang == b.lang and t.marker is None]
                if not twins:
                    problems.append(f"{b.where()}: {b.same_as} holds no unmarked copy of this block")
                    continue
                theirs = {t.file_name: t.text for t in target if t.file_name}
                for name, text in files.items():
                    if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", b.text) and theirs.get(name) != text:
                        problems.append(f"{b.where()}: {name} differs from {b.same_as}'s")
    assert not problems, "\n".join(problems)


def test_the_harness_reads_markers_and_files():
    text = "\n".join(
        [
            "```yaml", "# a.yaml — a comment", "x: 1", "```",
            "<!-- not run: takes an hour -->", "", "```bash", "sleep 3600", "```",
            "<!-- same as docs/x.md -->", "```python", "print(1)", "```",
            "```console", "$ ls", "```",
        ]
    )  # fmt: skip
    a, b, c, d = blocks("p.md", text)
    assert (a.file_name, a.runs, a.marker) == ("a.yaml", False, None)
    assert (b.not_run, b.runs, b.text) == ("takes an hour", True, "sleep 3600")
    assert (c.same_as, c.not_run) == ("docs/x.md", None)
    assert d.marker is None and d.runs and commands(d) == "ls"


def test_the_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_LINES
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        path = target.split("#")[0]
        if path and not re.match(r"^[a-z]+://", path) and not (REPO / path).exists():
            missing.append(target)
    assert not missing, missing


# ---------------------------------------------------------------- every README number is a committed one


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def shows(number: str, values: list[float], texts: list[str]) -> bool:
    """Whether ``number`` as printed (``93.4``, ``2.29``, ``790``) is one of ``values`` rounded to its
    decimals (as a fraction or in %), or is written in one of ``texts``."""
    shown = float(number.replace(",", ""))
    decimals = len(number.split(".")[1]) if "." in number else 0
    half = 0.5 * 10**-decimals * (1 + 1e-9) + 1e-12
    if any(abs(v - shown) <= half or abs(100 * v - shown) <= half for v in values):
        return True
    return any(re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", t) for t in texts)


def test_every_number_of_the_readme_results_is_in_the_result_it_links():
    """Each row of the README's results tables links committed results, and every number in its
    cells without a link (but the first) is in one of them (a JSON value, rounded as shown, or
    the text of a table)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = readme.split("## Results", 1)[1].split("\n## ", 1)[0].splitlines()
    headers = {i for i, line in enumerate(lines[:-1]) if lines[i + 1].startswith("|---")}
    rows = [line for i, line in enumerate(lines) if line.startswith("| ") and i not in headers]
    assert len(rows) >= 8
    problems = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        links = re.findall(r"\]\((benchmarks/results/[^)]+)\)", row)
        assert links, f"no committed result linked: {row}"
        values, texts = [], []
        for link in links:
            text = (REPO / link).read_text(encoding="utf-8")
            texts.append(text)
            if link.endswith(".json"):
                values += _numbers(json.loads(text))
        measured = re.sub(r"`[^`]*`", "", " ".join(c for c in cells[1:] if "](" not in c))  # names (`spectral_align`) are not numbers
        for number in re.findall(r"\d[\d,]*(?:\.\d+)?", measured):
            if not shows(number, values, texts):
                problems.append(f"{number} in '{cells[0]}' is not in {links}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- running the examples


def commands(block: Block) -> str:
    """A block's shell commands (a ``console`` block's are its ``$`` lines)."""
    if block.lang != "console":
        return block.text
    return "\n".join(line[2:] for line in block.text.splitlines() if line.startswith("$ "))


def environment() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", COLUMNS="120")
    return env


def run_page(found: list[Block], folder: Path) -> None:
    """Write the page's config files and run its runnable blocks in ``folder``, in order."""
    for b in found:
        if b.file_name:
            (folder / b.file_name).parent.mkdir(parents=True, exist_ok=True)
            (folder / b.file_name).write_text(b.text + "\n", encoding="utf-8")
        if not b.runs or b.marker is not None:
            continue
        argv = [sys.executable, "-c", b.text] if b.lang in PYTHON else ["bash", "-e", "-o", "pipefail", "-c", commands(b)]
        done = subprocess.run(argv, cwd=folder, env=environment(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{b.where()} exited {done.returncode}:\n{b.text}\n--- stderr ---\n{done.stderr[-3000:]}"


def conv_adapters(folder: Path) -> None:
    """Two random conv LoRAs of EfficientNet-Lite0 with 2-class heads, as concept modules are saved."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from common import save_random_adapter
    from eigenmix.vision import load_efficientnet_lite0

    lite0 = load_efficientnet_lite0()
    targets = ["_blocks.1._expand_conv", "_blocks.1._project_conv", "_conv_head"]
    for i, (name, label) in enumerate((("sneaker", "Sneaker"), ("sandal", "Sandal"))):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets)
        out = save_random_adapter(lite0, config, folder / name, seed=40 + i, scale=0.05, only="lora_B", base_id="efficientnet-lite0")
        g = torch.Generator().manual_seed(50 + i)
        save_file({"weight": torch.randn(2, 1280, generator=g) * 0.1, "bias": torch.zeros(2)}, str(out / "head.safetensors"))
        meta = {"task": name, "label_names": ["other", label], "modality": "image", "size": 64}
        (out / "head.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def template(minilm_adapters, tmp_path_factory, pages) -> Path:
    """The folder every page starts from: Getting started's adapters and rows, and the conv LoRAs."""
    root = tmp_path_factory.mktemp("docs_template")
    for task in ("trec", "cola"):
        shutil.copytree(minilm_adapters / "adapters" / task, root / "adapters" / task)
    conv_adapters(root / "adapters")
    run_page(blocks("docs/start.md", pages["docs/start.md"]), root)
    return root


RUN_PAGES = [
    "docs/guide/train.md",
    "docs/guide/merge.md",
    "docs/guide/calibrated-merge.md",
    "docs/guide/tune.md",
    "docs/guide/library.md",
    "docs/guide/route.md",
    "docs/guide/explain.md",
    "docs/guide/inspect.md",
    "docs/guide/methods.md",
    "docs/guide/vision.md",
    "docs/guide/bridge.md",
    "docs/guide/python.md",
    "docs/guide/moe.md",
]


def test_every_page_with_runnable_examples_is_run(pages):
    """The pages run below (and docs/start.md, run into the template) are all that have any."""
    runnable = {page for page, found in page_blocks(pages).items() if any(b.runs and b.marker is None for b in found)}
    assert runnable == {*RUN_PAGES, "docs/start.md"}


@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_examples_of_a_page_run(page, pages, template, tmp_path):
    folder = tmp_path / "scratch"
    shutil.copytree(template, folder)
    run_page(blocks(page, pages[page]), folder)


# ---------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**environment(), "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out), "--config-file", str(REPO / "mkdocs.yml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_has_the_generated_reference(site):
    from eigenmix.compose.routers.registry import all_routers
    from eigenmix.kinds import all_kinds
    from eigenmix.merging import all_methods

    methods = (site / "reference" / "methods" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="{m.name}"' in methods for m in all_methods())
    routers = (site / "reference" / "routers" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="{r.name}"' in routers for r in all_routers())
    kinds = (site / "reference" / "kinds" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="{k.name}"' in kinds for k in all_kinds())
    assert (site / "results" / "multitask_merge" / "results.png").is_file()
    assert (site / "architecture" / "index.html").is_file()


def chromium() -> str | None:
    return os.environ.get("EIGENMIX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def local_file(site: Path, url: str) -> Path | None:
    """The site file a same-site ``file://`` URL names (a folder's ``index.html``); None if not same-site."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    path = Path(unquote(parts.path))
    if site.resolve() not in path.resolve().parents and path.resolve() != site.resolve():
        return None
    return path / "index.html" if url.split("#")[0].split("?")[0].endswith("/") or path.is_dir() else path


def test_every_page_renders_with_its_images_and_links(site, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.fail("no Chromium: `make browser` installs Debian's chromium (apt-get); set EIGENMIX_CHROMIUM to use another")
    from playwright.sync_api import sync_playwright

    html = sorted(p for p in site.rglob("*.html") if p.name == "index.html" or p.name == "404.html")
    assert len(html) >= 30
    problems: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = b.new_page(viewport={"width": 1200, "height": 900})
            for i, path in enumerate(html):
                name = path.relative_to(site).as_posix()
                page.goto(path.as_uri(), wait_until="load")
                images = page.evaluate("Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0])")
                problems += [f"{name}: broken image {src}" for src, ok in images if not ok]
                for href in set(page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")):
                    target = local_file(site, href)
                    if target is not None and not target.is_file():
                        problems.append(f"{name}: broken link {href}")
                shot = shots / f"{i:03d}.png"
                page.screenshot(path=str(shot))
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000, name
        finally:
            b.close()
    assert not problems, "\n".join(problems)
