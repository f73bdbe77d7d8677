"""Training PEFT LoRA adapters on the bundled tasks (needs the ``hf`` extra)."""

from eigenmix.train.encoder import MINILM_ID, EncoderClassifier, load_encoder, minilm_path, quiet_transformers
from eigenmix.train.lora import BERT_LINEARS, LoraRecipe, evaluate_adapter, train_adapter

__all__ = [
    "BERT_LINEARS",
    "MINILM_ID",
    "EncoderClassifier",
    "LoraRecipe",
    "evaluate_adapter",
    "load_encoder",
    "minilm_path",
    "quiet_transformers",
    "train_adapter",
]
