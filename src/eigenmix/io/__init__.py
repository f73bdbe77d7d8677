"""Reading and writing: PEFT LoRA adapters, safetensors checkpoints, task vectors.

safetensors only; eigenmix never unpickles. Outputs are written atomically.
"""

from eigenmix.io.atomic import atomic_dir
from eigenmix.io.peft_lora import read_lora_adapter, write_lora_adapter
from eigenmix.io.safetensors_io import CheckpointReader, read_safetensors
from eigenmix.io.task_vector import iter_task_vector, load_task_vector

__all__ = [
    "CheckpointReader",
    "atomic_dir",
    "iter_task_vector",
    "load_task_vector",
    "read_lora_adapter",
    "read_safetensors",
    "write_lora_adapter",
]
