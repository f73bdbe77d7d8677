"""Tiny in-process models and real PEFT adapters for the I/O tests (no downloads)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D


class Tiny(nn.Module):
    """Three linears and a head: enough for rank/alpha patterns and modules_to_save."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"q": nn.Linear(12, 10), "v": nn.Linear(12, 10), "out": nn.Linear(10, 8)})
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.encoder["q"](x)) * self.encoder["v"](x)  # (batch, 10)
        return self.head(torch.relu(self.encoder["out"](h)))  # (batch, 3)


class TinyConv1D(nn.Module):
    """GPT-2 style layers whose weights are stored (in, out): PEFT's fan_in_fan_out."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = Conv1D(9, 7)  # nf=9 outputs, nx=7 inputs; weight (7, 9)
        self.c_proj = Conv1D(5, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.tanh(self.c_attn(x)))


def base_model(kind: str = "tiny", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Tiny() if kind == "tiny" else TinyConv1D()


def make_adapter(folder: Path, config: LoraConfig, *, kind: str = "tiny", seed: int = 1) -> PeftModel:
    """A real PEFT adapter with random (non-zero) LoRA factors, saved to ``folder``."""
    model = get_peft_model(copy.deepcopy(base_model(kind)), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(str(folder))
    model.eval()
    return model


def save_random_adapter(
    base: nn.Module, config: LoraConfig, folder: Path, *, seed: int, scale: float = 0.5, only: str = "lora_", base_id: str | None = None
) -> Path:
    """A real PEFT adapter on a copy of ``base`` whose parameters named ``*only*`` are seeded
    random numbers times ``scale``, saved to ``folder`` (``base_id``: the base model it names)."""
    import json

    model = get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(str(folder))
    if base_id is not None:
        config_file = folder / "adapter_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": base_id}))
    return folder


def load_adapter(folder: Path, kind: str = "tiny") -> PeftModel:
    model = PeftModel.from_pretrained(copy.deepcopy(base_model(kind)), str(folder))
    model.eval()
    return model


def inputs(kind: str = "tiny", n: int = 16) -> torch.Tensor:
    return torch.randn(n, 12 if kind == "tiny" else 7, generator=torch.Generator().manual_seed(99))


def run_cli(monkeypatch, *args) -> int:  # type: ignore[no-untyped-def]
    """Run the ``eigenmix`` console script in-process; its exit code (0 if it returns)."""
    import signal

    from eigenmix.cli import SIGNALS, main

    monkeypatch.setattr(sys, "argv", ["eigenmix", *map(str, args)])
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}  # the console script keeps its own handlers
    try:
        main()
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def fails_in_process(monkeypatch, capsys, *args) -> str:  # type: ignore[no-untyped-def]
    """Run the ``eigenmix`` console script in-process on a bad input, as the installed script
    would be run: exit code 2 and one line on stderr (no traceback); that line. The tests that
    check this end to end keep one or two bad inputs through the script in a fresh process
    (``test_cli_smoke.eigenmix``); the rest run here, without the 3-4 s of a fresh start."""
    capsys.readouterr()  # what was printed before this run is not its output
    code = run_cli(monkeypatch, *args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def raw_adapter(folder: Path, shapes: dict[str, tuple[int, int]], *, r: int = 4, seed: int = 0, base: str = "tiny/base") -> Path:
    """A PEFT-format LoRA adapter written directly (no model): ``shapes`` maps layer → (out, in)."""
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer, (m, n) in shapes.items():
        tensors[f"base_model.model.{layer}.lora_A.weight"] = torch.randn(r, n, generator=g) / n**0.5
        tensors[f"base_model.model.{layer}.lora_B.weight"] = torch.randn(m, r, generator=g) / r**0.5
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": sorted({k.rsplit(".", 1)[-1] for k in shapes})}
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    return folder


def eigenmix_script() -> Path:
    """The installed console script (the venv's ``eigenmix``)."""
    return Path(sys.executable).parent / "eigenmix"


def small_data(folder: Path, names=("trec", "cola"), train=48, test=24) -> Path:
    """A data folder of the first rows of some bundled tasks (no tasks.json)."""
    from eigenmix.data import load_tasks

    for task in load_tasks(names=list(names)):
        (folder / task.name).mkdir(parents=True)
        for split, rows in (("train", task.train[:train]), ("test", task.test[:test])):
            lines = "".join(r.model_dump_json(exclude_none=True) + "\n" for r in rows)
            (folder / task.name / f"{split}.jsonl").write_text(lines)
    return folder


def fashion_pngs(folder: Path, n: int = 6, prefix: str = ""):
    """The first ``n`` Fashion-MNIST test images as PNGs in ``folder`` with their ``labels.csv``
    (``file,label``, the class names); returns the :class:`ImageSet` they came from."""
    from PIL import Image

    from eigenmix.data.images import fashion_mnist

    folder.mkdir(parents=True)
    data = fashion_mnist("test", limit=n)
    lines = ["file,label"]
    for i in range(n):
        Image.fromarray(data.images[i].numpy(), mode="L").save(folder / f"{prefix}{i}.png")
        lines.append(f"{prefix}{i}.png,{data.class_names[int(data.labels[i])]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return data
