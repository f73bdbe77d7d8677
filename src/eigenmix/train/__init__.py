"""Training PEFT LoRA adapters on the bundled tasks (needs the ``hf`` extra)."""

from eigenmix.train.encoder import MINILM_ID, EncoderClassifier, load_encoder, minilm_path, quiet_transformers
from eigenmix.train.lora import LoraRecipe, evaluate_adapter, train_adapter
from eigenmix.train.module import ModuleRecipe, train_module
from eigenmix.train.recipe import BERT_LINEARS, TrainRecipe

__all__ = [
    "BERT_LINEARS",
    "MINILM_ID",
    "EncoderClassifier",
    "LoraRecipe",
    "ModuleRecipe",
    "TrainRecipe",
    "evaluate_adapter",
    "load_encoder",
    "minilm_path",
    "quiet_transformers",
    "train_adapter",
    "train_module",
]
