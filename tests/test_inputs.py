"""The input protocol: one tokeniser (a row is the same tokens on every path: routing and
explaining, evaluation, tuning, calibration, training), image batches, and what the live
pieces learn about real rows (:func:`row_mask`)."""

from __future__ import annotations

import pytest
import torch

from eigenmix.data.inputs import InputRow
from eigenmix.errors import InvalidInputError
from eigenmix.inputs import ImageInputs, TextInputs, mean_pool, row_mask

ROWS = [
    InputRow(1, "a charming journey ."),
    InputRow(2, "one sentence .", "and its pair ."),
    InputRow(3, "a much longer sentence with many more words in it than the others ."),
    InputRow(4, "short", "pair"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from eigenmix.train import load_encoder

    return load_encoder()[1]


def real_tokens(batches) -> dict[int, list[int]]:
    return {i: batch["input_ids"][j][batch["attention_mask"][j].bool()].tolist() for chunk, batch in batches for j, i in enumerate(chunk)}


def test_a_row_is_the_same_tokens_on_every_path(tokenizer):
    """Alone, in any batch, and through each harness path (which all go through TextInputs)."""
    from eigenmix.harness.calibration_rows import tokenized

    inputs = TextInputs(tokenizer, 64)
    alone = {i: real_tokens(inputs.batches([r], 1))[0] for i, r in enumerate(ROWS)}
    assert real_tokens(inputs.batches(ROWS, 4)) == alone
    assert real_tokens(inputs.batches(ROWS, 2)) == alone
    assert real_tokens(inputs.budget_batches(inputs.encode(ROWS), tokens=40)) == alone
    batch = inputs.batch(ROWS)  # tuning's and training's: all rows in order
    assert real_tokens([(list(range(len(ROWS))), batch)]) == alone
    [calibration] = tokenized(inputs, ROWS, 8)  # length-sorted: the Grams are sums over rows
    assert sorted(real_tokens([(list(range(len(ROWS))), calibration)]).values()) == sorted(alone.values())
    assert tokenizer.convert_ids_to_tokens(alone[0])[-1] == "[SEP]" and tokenizer.convert_ids_to_tokens(alone[0]).count("[SEP]") == 1


def test_the_evaluator_tokenises_with_the_one_tokeniser(tokenizer):
    from eigenmix.data.loader import Example
    from eigenmix.harness.evaluator import Evaluator

    ev = Evaluator(64)
    rows = [Example(text=r.text, text_pair=r.text_pair, label=0) for r in ROWS]
    split = ev.tokenize({"mixed": rows}, tokens_per_batch=40)
    per_batch = [real_tokens([(list(range(len(b["input_ids"]))), b)]).values() for b in split.batches]
    got = {int(i): ids for i, ids in zip(split.order, [x for b in per_batch for x in b], strict=True)}
    assert got == {i: real_tokens(TextInputs(tokenizer, 64).batches([r], 1))[0] for i, r in enumerate(ROWS)}


def test_mean_pool_and_masks():
    hidden = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), hidden[:, :2].mean(1))
    torch.testing.assert_close(mean_pool(hidden, None), hidden.mean(1))
    assert row_mask({"input_ids": torch.zeros(1, 4), "attention_mask": mask}) is mask
    assert row_mask({"pixel_values": torch.zeros(1, 3, 8, 8)}) is None  # every position of an image is real


def test_image_inputs_crop_resize_normalise_and_batch():
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=g)
    inputs = ImageInputs(28, 127.0, 128.0)
    x = inputs.pixels(grey)
    assert x.shape == (5, 3, 28, 28) and torch.equal(x[:, 0], x[:, 2])
    torch.testing.assert_close(x[:, 0], (grey.float() - 127) / 128)
    wide = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8, generator=g)
    torch.testing.assert_close(ImageInputs(20, 0.0, 1.0).pixels(wide), wide[..., 5:25].float())  # the centred square
    batches = ImageInputs(32, key="inputs").batches(grey, 2)
    assert [chunk for chunk, _ in batches] == [[0, 1], [2, 3], [4]] and batches[0][1]["inputs"].shape == (2, 3, 32, 32)
    features = torch.randn(2, 7, 4, 4)
    torch.testing.assert_close(ImageInputs(32).pool(features, {}), features.mean((2, 3)))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(2, 28, 28), "must be uint8"),
        (torch.zeros(2, 2, 28, 28, dtype=torch.uint8), r"must be \(N, H, W\)"),
        (torch.zeros(28, dtype=torch.uint8), r"must be \(N, H, W\)"),
    ],
)
def test_bad_images_are_one_line(images, message):
    with pytest.raises(InvalidInputError, match=message):
        ImageInputs(28).pixels(images)
