"""What every training run shares, whatever the kind: the layers, the schedule, the seed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Every attention and MLP linear of a BERT encoder layer (the pooler is not used).
BERT_LINEARS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


class TrainRecipe(BaseModel):
    """The schedule of one training run (a kind's own parameters live beside it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_modules: str = Field(BERT_LINEARS, description="regex of the encoder linears that get LoRA")
    steps: int = Field(30, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="rows per step")
    max_length: int = Field(64, ge=8, description="tokens per row (dynamic padding)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the LoRA factors")
    head_lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the head")
    dropout: bool = Field(False, description="the base model's dropout while training (off: ~30% faster steps on CPU)")
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of steps with linear warm-up; then linear decay to 0 (0: constant)")
    seed: int = Field(0, description="seed of initialisation and batch order (combined with the task name)")
