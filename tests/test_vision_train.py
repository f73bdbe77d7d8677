"""eigenmix.vision.train: image tasks from real Fashion-MNIST slices, conv LoRA concept modules
on EfficientNet-Lite0 saved in the text adapters' format (read by eigenmix and by PEFT), batch
norm frozen while training, the evaluator against a manual computation, a linear probe against
scikit-learn's logistic regression, every bad input one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

import eigenmix.vision.train as vision_train
from eigenmix.compose import Library
from eigenmix.data.images import ImageSet, fashion_mnist
from eigenmix.errors import InvalidInputError
from eigenmix.io import read_lora_adapter
from eigenmix.io.atomic import OutputError
from eigenmix.vision import (
    LITE0_CONVS,
    ImageLoraRecipe,
    ImageTask,
    class_subset,
    evaluate_image_adapter,
    fit_linear_head,
    grouped,
    image_features,
    image_task,
    inputs,
    load_efficientnet_lite0,
    lora_targets,
    one_vs_rest,
    train_image_adapter,
)

FOOTWEAR = ["Sandal", "Sneaker", "Ankle boot"]
GROUPS = {"tops": ["T-shirt/top", "Pullover", "Shirt", "Coat"], "bottoms": ["Trouser"], "footwear": FOOTWEAR, "bags": ["Bag"]}
RECIPE = ImageLoraRecipe(steps=20, batch_size=16, size=32)


@pytest.fixture(scope="module")
def fashion():
    return fashion_mnist("train", limit=400), fashion_mnist("test", limit=200)


@pytest.fixture(scope="module")
def trouser(fashion):
    return one_vs_rest("trouser", *fashion, "Trouser")


@pytest.fixture(scope="module")
def trained(trouser, tmp_path_factory):
    """One adapter on "is it a trouser" (20 steps at 32 px), its losses and the model it was
    trained in (caught from the loader)."""
    folder = tmp_path_factory.mktemp("vision_train") / "trouser"
    models: list[nn.Module] = []

    def loader(*args, **kwargs):
        models.append(load_efficientnet_lite0(*args, **kwargs))
        return models[-1]

    losses: list[float] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vision_train, "load_efficientnet_lite0", loader)
        result = train_image_adapter(trouser, RECIPE, folder, on_step=lambda step, loss: losses.append(loss))
    return folder, result, losses, models[0]


# ---------------------------------------------------------------------------------------------
# tasks


def test_one_vs_rest_is_balanced_and_seeded(fashion):
    train, test = fashion
    task = one_vs_rest("trouser", train, test, "Trouser", seed=3)
    assert task.label_names == ("other", "Trouser") and task.num_labels == 2
    for split, source in ((task.train, train), (task.test, test)):
        trousers = int((source.labels == 1).sum())
        assert int((split.labels == 1).sum()) == int((split.labels == 0).sum()) == trousers > 0
        # every trouser of the source, and none among the negatives
        source_trousers = source.images[source.labels == 1]
        assert torch.equal(split.images[split.labels == 1], source_trousers)
        negatives = split.images[split.labels == 0]
        assert not any(torch.equal(n, t) for n in negatives[:5] for t in source_trousers)
    again = one_vs_rest("trouser", train, test, "Trouser", seed=3)
    assert torch.equal(again.train.images, task.train.images)
    other = one_vs_rest("trouser", train, test, "Trouser", seed=4)
    assert not torch.equal(other.train.images, task.train.images)
    double = one_vs_rest("trouser", train, test, "Trouser", negatives_per_positive=2)
    assert int((double.train.labels == 0).sum()) == 2 * int((double.train.labels == 1).sum())


def test_class_subset_relabels_in_the_given_order(fashion):
    train, test = fashion
    task = class_subset("footwear", train, test, FOOTWEAR)
    assert task.label_names == tuple(FOOTWEAR)
    for split, source in ((task.train, train), (task.test, test)):
        for k, name in enumerate(FOOTWEAR):
            old = source.class_names.index(name)
            assert torch.equal(split.images[split.labels == k], source.images[source.labels == old])
        assert len(split) == sum(int((source.labels == source.class_names.index(c)).sum()) for c in FOOTWEAR)


def test_grouped_maps_classes_to_groups(fashion):
    train, test = fashion
    task = grouped("kinds", train, test, GROUPS)
    assert task.label_names == ("tops", "bottoms", "footwear", "bags")
    names = train.class_names
    kept = [i for i, label in enumerate(train.labels.tolist()) if names[label] != "Dress"]  # Dress is in no group
    assert len(task.train) == len(kept)
    expected = [next(k for k, members in enumerate(GROUPS.values()) if names[train.labels[i]] in members) for i in kept]
    assert task.train.labels.tolist() == expected
    assert torch.equal(task.train.images, train.images[kept])
    whole = image_task("all", train, test)
    assert whole.label_names == train.class_names and whole.train is train


def test_task_mistakes_are_one_line(fashion):
    train, test = fashion
    cases = [
        (lambda: class_subset("x", train, test, ["Sandal", "Boot"]), "unknown class 'Boot'"),
        (lambda: class_subset("x", train, test, ["Sandal", "Sandal"]), "named twice"),
        (lambda: class_subset("x", train, test, ["Sandal"]), "at least 2 classes"),
        (lambda: grouped("x", train, test, {"a": ["Bag"], "b": ["Purse"]}), "unknown class 'Purse'"),
        (lambda: grouped("x", train, test, {"a": ["Bag"], "b": ["Bag"]}), "'Bag' is named twice"),
        (lambda: grouped("x", train, test, {"a": ["Bag"], "b": []}), "group 'b' has no classes"),
        (lambda: one_vs_rest("x", train, test, "Boot"), "unknown class 'Boot'"),
        (lambda: one_vs_rest("x", train, test, "Trouser", negatives_per_positive=0), "negatives_per_positive must be >= 1"),
        (lambda: one_vs_rest("x", train, test, "Trouser", negatives_per_positive=50), "images of other classes"),
        (lambda: image_task("x", train, ImageSet(test.images[:0], test.labels[:0], test.class_names)), "the test split is empty"),
        (lambda: image_task("x", train, ImageSet(test.images, test.labels, tuple("abcdefghij"))), "class names differ"),
        (lambda: class_subset("x", train, ImageSet(test.images, test.labels, tuple("abcdefghij")), FOOTWEAR), "class names differ"),
        (lambda: ImageTask(" ", train, test), "non-empty name"),
    ]
    only_bags = ImageSet(train.images[train.labels == 8], train.labels[train.labels == 8], train.class_names)
    cases.append((lambda: class_subset("x", only_bags, test, FOOTWEAR), "task 'x': the train split is empty"))
    for make, message in cases:
        with pytest.raises(InvalidInputError, match=message) as err:
            make()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# recipe and targets


def test_default_targets_are_lite0s_ungrouped_convs():
    model = load_efficientnet_lite0()
    names = lora_targets(model, LITE0_CONVS)
    ungrouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert names == ungrouped and len(names) == 1 + 15 + 16 + 1  # stem, expand, project, head
    with pytest.raises(InvalidInputError, match="grouped"):
        lora_targets(model, r"_blocks\.0\._depthwise_conv")
    with pytest.raises(InvalidInputError, match="a BatchNorm2d"):
        lora_targets(model, r"_bn0")
    with pytest.raises(InvalidInputError, match="matches no layer"):
        lora_targets(model, r"encoder\.layer\.\d+")


def test_recipe_mistakes():
    for bad, message in [({"size": 48}, "multiple of 32"), ({"target_modules": "("}, "not a regex"), ({"rank": 4}, "rank")]:
        with pytest.raises(ValidationError, match=message):
            ImageLoraRecipe(**bad)


# ---------------------------------------------------------------------------------------------
# training


def test_training_lowers_the_loss(trained):
    _, result, losses, _ = trained
    assert len(losses) == RECIPE.steps and result["final_loss"] == losses[-1]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_batch_norm_and_base_weights_stay_frozen(trained):
    *_, model = trained
    fresh = load_efficientnet_lite0().state_dict()
    trained_state = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert trained_state.keys() == fresh.keys()  # running means, variances, counts, affine and conv weights
    assert all(torch.equal(trained_state[k], fresh[k]) for k in fresh)
    learned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert learned and all(".lora_A." in n or ".lora_B." in n for n in learned)


def test_adapter_is_read_by_eigenmix_and_peft(trained):
    folder, _, _, model = trained
    module = read_lora_adapter(folder)
    assert module.base_model == "efficientnet-lite0" and len(module) == 33
    expand, stem = module.layers["_blocks.1._expand_conv"], module.layers["_conv_stem"]
    assert expand.kernel == (96, 16, 1, 1) and expand.shape == (96, 16)
    assert stem.kernel == (32, 3, 4, 4)  # the stride-2 stem made plain: 3×3 grown to 4×4
    assert torch.count_nonzero(expand.B) > 0  # lora_B learned
    Library().add(module)  # a library takes it as it is
    loaded = PeftModel.from_pretrained(load_efficientnet_lite0(), str(folder)).eval()
    x = inputs(32).pixels(fashion_mnist("test", limit=4).images)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    meta = json.loads((folder / "head.json").read_text())
    assert meta["label_names"] == ["other", "Trouser"] and meta["task"] == "trouser"
    assert meta["modality"] == "image" and meta["size"] == 32 and meta["train_rows"] > 0
    assert meta["recipe"] == RECIPE.model_dump() and isinstance(meta["train_seconds"], float)
    head = load_file(str(folder / "head.safetensors"))
    assert head["weight"].shape == (2, 1280) and head["bias"].shape == (2,)


def test_evaluate_matches_a_manual_computation(trained, trouser):
    folder, *_ = trained
    got = evaluate_image_adapter(folder, trouser, limit=24)
    model = PeftModel.from_pretrained(load_efficientnet_lite0(), str(folder)).eval()
    head = load_file(str(folder / "head.safetensors"))
    with torch.no_grad():
        pooled = model.extract_features(inputs(32).pixels(trouser.test.images[:24])).mean((2, 3))  # (24, 1280)
        predicted = (pooled @ head["weight"].T + head["bias"]).argmax(-1)
    assert got == int((predicted == trouser.test.labels[:24]).sum()) / 24
    assert got > 0.75  # an easy concept after 20 steps
    footwear = class_subset("footwear", fashion_mnist("train", limit=50), fashion_mnist("test", limit=50), FOOTWEAR)
    with pytest.raises(InvalidInputError, match="head's labels"):
        evaluate_image_adapter(folder, footwear)


def test_training_mistakes_are_caught_before_training(trouser, tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")

    def no_step(step, loss):
        raise AssertionError("trained before the output was checked")

    with pytest.raises(OutputError, match="already exists"):
        train_image_adapter(trouser, RECIPE, existing, on_step=no_step)
    with pytest.raises(OutputError, match="not an earlier output"):
        train_image_adapter(trouser, RECIPE, existing, overwrite=True, on_step=no_step)
    with pytest.raises(InvalidInputError, match="grouped"):
        train_image_adapter(trouser, ImageLoraRecipe(target_modules=r"_blocks\.\d+\._depthwise_conv"), tmp_path / "new", on_step=no_step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(InvalidInputError, match="no such adapter folder"):
        evaluate_image_adapter(tmp_path / "missing", trouser)
    with pytest.raises(InvalidInputError, match=r"has no head\.safetensors"):
        evaluate_image_adapter(existing, trouser)


def test_a_head_that_is_not_an_image_heads_is_refused(trained, trouser, tmp_path):
    folder, *_ = trained
    for key, value, message in [
        ("modality", None, "not an image head's"),
        ("size", "32", "not an image head's"),
        ("label_names", ["other", "Trouser", "Skirt"], "expected weight \\(3, 1280\\)"),
    ]:
        copy = tmp_path / key
        shutil.copytree(folder, copy)
        meta = json.loads((copy / "head.json").read_text())
        meta[key] = value
        (copy / "head.json").write_text(json.dumps(meta))
        with pytest.raises(InvalidInputError, match=message) as err:
            evaluate_image_adapter(copy, trouser)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# a linear probe on frozen features


def test_linear_head_matches_sklearns_logistic_regression(fashion):
    from sklearn.linear_model import LogisticRegression

    task = class_subset("footwear", *fashion, FOOTWEAR)
    x = image_features(load_efficientnet_lite0(), task.train.images[:60], 32)  # (60, 1280)
    y = task.train.labels[:60]
    l2 = 1e-2
    head = fit_linear_head(x, y, 3, l2=l2)
    again = fit_linear_head(x, y, 3, l2=l2)
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)  # deterministic
    z = ((x - x.mean(0)) / x.std(0, correction=0).clamp_min(1e-6)).double().numpy()
    # sklearn minimises ½‖W‖² + C Σ loss; ours is mean loss + ½ l2 ‖W‖², i.e. C = 1 / (l2 N)
    reference = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000).fit(z, y.numpy())
    with torch.no_grad():
        ours = torch.softmax(head(x).double(), -1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(z), atol=1e-4)
    for bad, message in [
        ((x[:, :, None], y, 3), "float \\(N, d\\)"),
        ((x, y.int(), 3), "int64"),
        ((x, y, 2), "must lie in \\[0, 2\\)"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            fit_linear_head(*bad)


# ---------------------------------------------------------------------------------------------
# training kinds on images


@pytest.mark.parametrize("kind", ["svf", "orthogonal"])
def test_a_module_of_a_training_kind_on_images_is_a_conv_lora_that_peft_loads(kind, trouser, trained, tmp_path):
    """``train_image_module``: an ``svf`` module (one scale per singular value of each conv's
    matrix view) and one ``orthogonal`` to the PEFT-trained trouser adapter, 3 steps each;
    saved as conv LoRAs that PEFT loads (the loaded model equals the dense update added to
    the kernels), with the head beside; the orthogonal one is orthogonal to its library."""
    from eigenmix.vision import train_image_module
    from eigenmix.vision.heads import load_image_adapter

    library = [read_lora_adapter(trained[0])]
    recipe = RECIPE.model_copy(update={"steps": 3})
    done = train_image_module(trouser, recipe, tmp_path / kind, kind=kind, params={"r": 4} if kind == "orthogonal" else {}, library=library)
    module = read_lora_adapter(tmp_path / kind)
    names = lora_targets(load_efficientnet_lite0(), LITE0_CONVS)
    assert set(module.layers) == set(names) and module.layers["_conv_stem"].tensor().ndim == 4
    if kind == "svf":
        assert done["trained_parameters"] == sum(min(module.layers[n].shape) for n in names)
    else:
        for name, old in library[0].layers.items():
            a, b = old.dense().double(), module.layers[name].dense().double()
            assert (a.T @ b).abs().max() < 1e-5 * a.norm() * b.norm() and (a @ b.T).abs().max() < 1e-5 * a.norm() * b.norm()
    model, head, meta = load_image_adapter(tmp_path / kind)  # through PEFT
    assert meta["recipe"]["kind"] == kind and meta["size"] == 32 and head.out_features == 2
    dense = load_efficientnet_lite0()
    with torch.no_grad():
        for name in names:
            dense.get_submodule(name).weight += module.layers[name].tensor()
    x = inputs(32).pixels(trouser.test.images[:4])
    with torch.no_grad():
        assert torch.allclose(model(x), dense(x), atol=1e-4)
