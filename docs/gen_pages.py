"""The site's generated pages, written at every build by mkdocs-gen-files (``mkdocs.yml``).

What the code already knows is read from the code, never written twice:

- ``reference/methods.md``: every merge method of ``eigenmix.merging.registry`` (name, paper,
  parameters with their types, defaults and descriptions, calibration, vector rule, ...);
- ``reference/routers.md``: every router of ``eigenmix.compose.routers.registry``;
- ``reference/kinds.md``: every training kind of ``eigenmix.kinds`` (``eigenmix train``);
- ``reference/config.md``: the YAML configs of ``merge``, ``tune``, ``train`` and ``bridge fit``, from their
  pydantic models (the ``Field`` descriptions the CLI and the error messages use too);
- ``reference/cli.md``: every command and option of the ``eigenmix`` script (its Typer app);
- ``examples.md``: one entry per ``examples/*.py``, from the script's docstring.

Files that live outside ``docs/`` come in here, not by copies kept by hand: ``ARCHITECTURE.md``
(its links rewritten for the site), the examples' sources (``examples/``) and the committed
benchmark results (``results/``: charts, JSON, tables). ``tests/test_docs.py`` imports
:func:`pages` to check the code blocks of the generated pages too.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXAMPLES = REPO / "examples"


# ---------------------------------------------------------------- small markdown helpers


def cell(text: object) -> str:
    """One table cell: no line breaks, ``|`` escaped outside code spans (a table leaves those whole)."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def code(text: object) -> str:
    return f"`{text}`"


# ---------------------------------------------------------------- pydantic fields


def _constraints(metadata: list[Any]) -> str:
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥", "max_length": "length ≤"}
    parts = []
    for item in metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def type_name(annotation: Any, link: dict[type, str]) -> str:
    """A reader's name for a field's type: ``float``, ``layer | global``, ``list of [ModuleEntry](#…)``."""
    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], link)
    if origin is typing.Literal:
        return " | ".join(code(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a, link) for a in args if a is not type(None)]
        return " | ".join(names) + (" | `null`" if type(None) in args else "")
    if origin in (list, tuple):
        return "list of " + type_name(args[0], link)
    if origin is dict:
        return f"map of {type_name(args[0], link)} → {type_name(args[1], link)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}]({link[annotation]})" if annotation in link else annotation.__name__
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        return "see its table" if isinstance(value, BaseModel) else code(value)
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "`null`"
    if isinstance(field.default, bool):
        return code(str(field.default).lower())
    if isinstance(field.default, tuple):
        return code(list(field.default))
    return code(field.default)


def fields_table(model: Any, link: dict[type, str]) -> str:
    rows = []
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation, link)
        bounds = _constraints(field.metadata)
        rows.append((code(name), kind + (f" ({bounds})" if bounds else ""), default_text(field), field.description or ""))
    return table(["key", "type", "default", "description"], rows)


def nested_models(model: Any) -> list[Any]:
    """``model`` and every pydantic model its fields hold, depth first, each once."""
    from pydantic import BaseModel

    seen: list[Any] = []

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
            seen.append(annotation)
            for field in annotation.model_fields.values():
                walk(field.annotation)
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(model)
    return seen


# ---------------------------------------------------------------- the methods reference

CONV = {
    "spectral": "on its matrix view `(out, in/groups·∏k)`, in the joint basis; written back in the kernel's shape",
    "elementwise": "entry by entry on the kernel (its matrix view holds the same entries); written back in its shape",
}
DENSE = {
    "linear": "summed directly, no SVD",
    "spectral": "a truncated SVD first (randomized at `dense_rank` or `output.rank`, else exact)",
    "elementwise": "the dense deltas, no SVD",
}
VECTORS = {
    "sum": "weighted sum × scale",
    "mean": "mean over the modules × scale",
    "weighted_mean": "weighted average (÷ Σ weights) × scale",
    "method": "the method's own element-wise merge",
}
CALIBRATION = {
    None: "none (data-free)",
    "own": "Grams of each task's inputs to its own model (`calibration:` section)",
    "merged": "Grams of each task's inputs to the already-merged earlier blocks (`calibration:` section)",
}


def vector_rule(method: Any) -> str:
    """The method's rule for non-matrix tensors; where a parameter switches it, each case."""
    params = method.params()
    base = method.vector_rule(params)
    text = VECTORS[base]
    for name, field in method.params.model_fields.items():
        choices = [True, False] if field.annotation is bool else list(typing.get_args(field.annotation))
        if typing.get_origin(field.annotation) is not typing.Literal and field.annotation is not bool:
            continue
        for value in choices:
            if value == getattr(params, name):
                continue
            other = method.vector_rule(method.params(**{name: value}))
            if other != base:
                text += f"; with `{name}: {str(value).lower() if isinstance(value, bool) else value}`: {VECTORS[other]}"
    return text


def methods_page() -> str:
    from eigenmix.merging import all_methods

    methods = all_methods()
    out = [
        "# Merge methods\n",
        "Generated at build time from `eigenmix.merging.registry` (the same registry that `eigenmix methods`",
        "prints and that a merge config's `method:` is checked against). Every method also takes `scale`;",
        "a config's `parameters:` holds the rest. How to choose: [Merge methods](../guide/methods.md).\n",
        table(
            ["method", "kind", "needs calibration rows", "description"],
            [(f"[`{m.name}`](#{m.name})", m.kind, "yes" if m.calibration else "no", m.description) for m in methods],
        ),
        "*spectral*: basis-invariant, runs on the joint-basis cores of each layer (no `m × n` matrix);",
        "*elementwise*: acts on weight entries, so it forms the dense deltas of one layer at a time.\n",
    ]
    for m in methods:
        paper = f"[{m.paper}]({m.url})" if m.url else m.paper
        facts = [
            ("kind", m.kind),
            ("paper", paper),
            ("calibration", CALIBRATION[m.calibration]),
            ("vectors (biases, norms)", vector_rule(m)),
            ("conv kernels", CONV[m.kind]),
            ("dense task vectors (fine-tunes)", DENSE["linear" if m.linear_map else m.kind]),
            ("`continue_from`", "yes: writes `merge_state.*` to fold more modules in later" if m.continual else "no"),
            ("`trim: global`", "supported (a first pass over the whole model)" if m.trim_values else "—"),
            ("source", code(f"src/{m.fn.__module__.replace('.', '/')}.py")),
        ]
        out += [
            f"## `{m.name}` {{#{m.name}}}\n",
            f"{m.description}\n",
            table(["property", "value"], facts),
            "**Parameters**\n",
            fields_table(m.params, {}),
        ]
    return "\n".join(out)


# ---------------------------------------------------------------- the routers reference


def routers_page() -> str:
    from eigenmix.compose.routers.registry import all_routers

    routers = list(all_routers())
    out = [
        "# Routers\n",
        "Generated at build time from `eigenmix.compose.routers.registry`. A router turns each input into",
        "coefficients over a library's modules; `eigenmix route --router NAME` and",
        "`eigenmix explain LIBRARY --router NAME` pick one. How to use them: [Route inputs](../guide/route.md).\n",
        table(["router", "description"], [(f"[`{r.name}`](#{r.name})", r.description) for r in routers]),
    ]
    for r in routers:
        paper = f"[{r.paper}]({r.url})" if r.url else (r.paper or "—")
        out += [f"## `{r.name}` {{#{r.name}}}\n", f"{r.description}\n", f"Paper: {paper}\n"]
        if r.params is not None and r.params.model_fields:
            out += ["**Parameters**\n", fields_table(r.params, {})]
        else:
            out.append("No parameters.\n")
    return "\n".join(out)


# ---------------------------------------------------------------- the training kinds reference


def kinds_page() -> str:
    from eigenmix.kinds import all_kinds

    kinds = all_kinds()
    out = [
        "# Training kinds\n",
        "Generated at build time from `eigenmix.kinds` (the registry `eigenmix train --kinds` lists and a",
        "train config's `kind:` is checked against). Every kind is saved as a PEFT LoRA adapter `(B, A)` of the",
        "rank below. How to train one: [Train a module](../guide/train.md).\n",
        table(["kind", "saved rank", "description"], [(f"[`{k.name}`](#{k.name})", k.saved_rank, k.description) for k in kinds]),
    ]
    for k in kinds:
        paper = f"[{k.paper}]({k.url})" if k.url else (k.paper or "—")
        facts = [("paper", paper), ("saved rank", k.saved_rank), ("needs a library", "yes (`library:`)" if k.needs_library else "no")]
        out += [f"## `{k.name}` {{#{k.name}}}\n", f"{k.description}\n", table(["property", "value"], facts)]
        out += ["**Parameters**\n", fields_table(k.params, {})]
    return "\n".join(out)


# ---------------------------------------------------------------- the config reference


def config_section(title: str, intro: str, root: Any, anchors: dict[type, str]) -> list[str]:
    out = [f"## {title}\n", intro + "\n"]
    for model in nested_models(root):
        if not anchors[model].startswith("#"):
            continue  # documented on another page (a merge's parameters: the methods reference)
        heading = "Top level" if model is root else model.__name__
        out += [f"### {heading} {{#{anchors[model].lstrip('#')}}}\n", (model.__doc__ or "").strip() + "\n"]
        out.append(fields_table(model, anchors))
    return out


def config_page() -> str:
    from eigenmix.harness.bridge_run import BridgeConfig
    from eigenmix.harness.train_config import TrainConfig
    from eigenmix.harness.tune_config import TuneConfig
    from eigenmix.merging.config import MergeConfig
    from eigenmix.merging.registry import MergeParams

    roots = [
        (
            "`eigenmix merge CONFIG`",
            "A merge of adapters or fine-tunes ([guide](../guide/merge.md)). `parameters:` holds the method's own "
            "parameters: [Merge methods](methods.md). Relative paths are resolved against the config file's folder.",
            MergeConfig,
            "merge",
        ),
        (
            "`eigenmix tune CONFIG`",
            "Learned coefficients ([guide](../guide/tune.md)). Relative paths are resolved against the config file's folder.",
            TuneConfig,
            "tune",
        ),
        (
            "`eigenmix train CONFIG`",
            "One module trained on a text task ([guide](../guide/train.md)). `params:` holds the kind's own parameters: "
            "[Training kinds](kinds.md). Relative paths are resolved against the config file's folder.",
            TrainConfig,
            "train",
        ),
        ("`eigenmix bridge fit CONFIG`", "A bridge between two encoders ([guide](../guide/bridge.md)).", BridgeConfig, "bridge"),
    ]
    anchors: dict[type, str] = {MergeParams: "methods.md"}  # a merge's parameters: the methods reference
    for _, _, root, prefix in roots:
        for model in nested_models(root):
            anchors.setdefault(model, f"#{prefix}-{model.__name__.lower()}")
    out = [
        "# Config files\n",
        "Generated at build time from the pydantic models that read each YAML config: the descriptions",
        "are the ones the command line shows. Every config is checked before any work starts; unknown",
        "keys, wrong types and out-of-range values are reported together on one line (exit code 2).\n",
    ]
    for title, intro, root, _ in roots:
        out += config_section(title, intro, root, anchors)
    return "\n".join(out)


# ---------------------------------------------------------------- the command-line reference


def cli_default(param: Any) -> str:
    if param.required:
        return "**required**"
    if param.default in (None, [], ()):
        return ""
    return code(str(param.default).lower() if isinstance(param.default, bool) else param.default)


def cli_page() -> str:
    import typer
    from typer._click.core import Context

    from eigenmix.cli.app import app

    root = typer.main.get_command(app)
    out = [
        "# Command line\n",
        "Generated at build time from the `eigenmix` script itself (its Typer app): every command, argument",
        "and option, as `eigenmix COMMAND --help` shows them. Task-oriented pages: the Guide.\n",
    ]

    def walk(command: Any, path: list[str]) -> None:
        sub = getattr(command, "commands", None)
        if sub:
            if path:
                out.append(f"## `eigenmix {' '.join(path)}` {{#{'-'.join(path)}}}\n\n{command.help or ''}\n")
                out.append("Subcommands: " + ", ".join(f"[`{n}`](#{'-'.join([*path, n])})" for n in sub) + "\n")
            for name, child in sub.items():
                walk(child, [*path, name])
            return
        ctx = Context(command, info_name=path[-1])
        pieces = [re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), piece) for piece in command.collect_usage_pieces(ctx)]
        usage = " ".join(["eigenmix", *path, *pieces])
        level = "###" if len(path) > 1 else "##"
        helptext = (command.help or "").replace("``", "`")
        out.append(f"{level} `eigenmix {' '.join(path)}` {{#{'-'.join(path)}}}\n\n{helptext}\n\n`{usage}`\n")
        rows = []
        for p in command.params:
            if p.param_type_name == "argument":
                name = code(p.name.upper() + ("…" if p.nargs == -1 else ""))
            else:
                name = ", ".join(code(o) for o in p.opts)
            kind = p.display_type(ctx).strip("<>").replace(" range", "")
            bounds = p._get_number_range_help_str()  # e.g. "x>=1", "2<=x<=500"
            if bounds:
                kind += " (" + bounds.replace("<=", " ≤ ").replace(">=", " ≥ ") + ")"
            if getattr(p, "multiple", False):
                kind += ", repeatable"
            rows.append((name, kind, cli_default(p), p.help or ""))
        if rows:
            out.append(table(["argument / option", "type", "default", "description"], rows))

    walk(root, [])
    return "\n".join(out)


# ---------------------------------------------------------------- files from outside docs/


def site_link(target: str, source: Path) -> str:
    """A link of a file outside ``docs/`` (relative to ``source``'s folder), as the site has it.

    The site's generated pages sit at its root (``architecture.md``, ``examples.md``), so a link is
    made relative to the repository root and then mapped: ``docs/X`` → ``X``, ``benchmarks/results/X``
    → ``results/X``, ``examples/X`` → ``examples/X``, ``ARCHITECTURE.md`` → ``architecture.md``,
    ``README.md`` → ``index.md``. Anything else (source files) is not on the site: ``None``."""
    if re.match(r"^[a-z]+://|^#|^mailto:", target):
        return target
    path, _, anchor = target.partition("#")
    rel = (source.parent / path).resolve().relative_to(REPO).as_posix()
    mapped = None
    if rel.startswith("docs/"):
        mapped = rel.removeprefix("docs/")
    elif rel.startswith("benchmarks/results/"):
        mapped = "results/" + rel.removeprefix("benchmarks/results/")
    elif rel.startswith("examples/"):
        mapped = rel
    elif rel == "ARCHITECTURE.md":
        mapped = "architecture.md"
    elif rel == "README.md":
        mapped = "index.md"
    if mapped is None:
        return ""
    return mapped + (f"#{anchor}" if anchor else "")


def imported_markdown(source: Path) -> str:
    """A markdown file from outside ``docs/`` with its links made the site's (a link to a file the
    site does not carry becomes its text in code)."""

    def fix(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        new = site_link(target, source)
        return f"[{text}]({new})" if new else (text if text.startswith("`") else f"`{text}`")

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, source.read_text(encoding="utf-8"))


def examples_page() -> str:
    import ast

    out = [
        "# Examples\n",
        "Short, runnable scripts in the repository's `examples/` folder, each one job end to end.",
        "`tests/test_examples.py` runs every one of them. Each entry below is the script's own docstring;",
        "the source link opens the file itself.\n",
    ]
    readme = EXAMPLES / "README.md"
    if readme.is_file():
        out.append("[The examples' README](examples/about.md) says what to run first.\n")
    for script in sorted(EXAMPLES.glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        out.append(f"## `{script.name}`\n")
        for paragraph in doc.split("\n\n"):
            lines = [line for line in paragraph.splitlines() if line.strip()]
            if lines and all(line.startswith(" ") for line in lines):  # the docstring's indented usage lines
                usage = "\n".join(line.strip() for line in lines)
                out += ["<!-- not run: usage lines that name your own files; tests/test_examples.py runs every script on tiny inputs -->"]
                out += ["```bash", usage, "```\n"]
            elif lines:
                out.append(" ".join(" ".join(lines).split()) + "\n")
        out.append(f"Source: [examples/{script.name}](examples/{script.name})\n")
    return "\n".join(out)


def copied_files() -> dict[str, bytes]:
    """The committed benchmark results and the examples' sources, byte for byte."""
    files = {f"results/{p.relative_to(RESULTS).as_posix()}": p.read_bytes() for p in sorted(RESULTS.rglob("*")) if p.is_file()}
    if EXAMPLES.is_dir():
        for p in sorted(EXAMPLES.iterdir()):
            if p.suffix == ".py":
                files[f"examples/{p.name}"] = p.read_bytes()
            elif p.name == "README.md":
                files["examples/about.md"] = imported_markdown(p).encode()  # README.md would be the folder's index
    return files


def pages() -> dict[str, str | bytes]:
    """Every generated file: its path in the site's sources → its content."""
    generated: dict[str, str | bytes] = {
        "reference/methods.md": methods_page(),
        "reference/routers.md": routers_page(),
        "reference/kinds.md": kinds_page(),
        "reference/config.md": config_page(),
        "reference/cli.md": cli_page(),
        "architecture.md": imported_markdown(REPO / "ARCHITECTURE.md"),
        "examples.md": examples_page(),
    }
    generated.update(copied_files())
    return generated


def write() -> None:
    import mkdocs_gen_files

    for path, content in pages().items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with mkdocs_gen_files.open(path, mode) as f:
            f.write(content)


if __name__ == "<run_path>":  # mkdocs-gen-files runs this file with runpy.run_path
    write()
