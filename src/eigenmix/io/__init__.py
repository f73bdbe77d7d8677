"""Reading and writing: PEFT LoRA adapters, safetensors checkpoints, task vectors.

safetensors only; eigenmix never unpickles. Outputs are written atomically.
"""

from eigenmix.io.atomic import atomic_dir
from eigenmix.io.peft_lora import read_lora_adapter, write_lora_adapter
from eigenmix.io.safetensors_io import CheckpointReader, read_safetensors
from eigenmix.io.task_vector import LazyTaskVector, load_task_vector

__all__ = [
    "CheckpointReader",
    "LazyTaskVector",
    "atomic_dir",
    "load_task_vector",
    "read_lora_adapter",
    "read_safetensors",
    "write_lora_adapter",
]
