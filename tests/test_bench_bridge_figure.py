"""``bench bridge``'s figure: the plane it projects on (against a known geometry) and the PNG
drawn from the JSON's numbers alone (with and without the photo and the feature-picking panel)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from eigenmix.bench.bridge import plane
from eigenmix.bench.bridge_figure import cats_and_dogs_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_plane_is_the_cats_direction_and_the_dogs_made_orthogonal_to_it():
    """Cats along −e₀, dogs along e₀ + e₁: the plane is (−e₀, e₁), each group on the positive
    side of its own direction."""
    g = torch.Generator().manual_seed(0)
    e = torch.eye(6, dtype=torch.float64)
    cats = -torch.rand(5, 1, generator=g, dtype=torch.float64) * e[0]
    dogs = (1 + torch.rand(9, 1, generator=g, dtype=torch.float64)) * (e[0] + e[1])
    B = plane(cats, dogs)
    assert B.shape == (6, 2)
    assert torch.allclose(B.T @ B, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(B[:, 0], -e[0], atol=1e-6) and torch.allclose(B[:, 1], e[1], atol=1e-6)
    assert bool(((cats @ B)[:, 0] > 0).all()) and bool(((dogs @ B)[:, 1] > 0).all())


def synthetic(chelsea: bool) -> dict:
    points = {
        "cats": [[0.8, 0.0], [0.85, 0.05], [0.9, -0.02]],
        "cat_names": ["tabby", "tiger cat", "Persian cat"],
        "dogs": [[0.2, 0.6], [0.3, 0.5], [0.25, 0.7], [0.1, 0.55]],
        "words": {"cat": [0.7, -0.1], "dog": [0.3, 0.5]},
    }
    out: dict = {"principal_angles_deg": [60.0, 75.0, 88.0], "plane": points}
    if chelsea:
        points["chelsea"] = [0.5, 0.1]
        out["chelsea"] = {"energy_in_cats": 0.2, "energy_in_dogs": 0.1, "nearest_names": ["tabby"]}
    else:
        out["chelsea"] = "scikit-image is not installed"
    return out


def test_the_figure_is_a_png_from_the_numbers_alone():
    curve = {"8": {"top1": 0.15}, "16": {"top1": 0.25}, "32": {"top1": 0.3}}
    three = Image.open(io.BytesIO(png := cats_and_dogs_png(synthetic(True), curve)))
    two = Image.open(io.BytesIO(cats_and_dogs_png(synthetic(False))))
    assert png[:8] == PNG and len(png) > 20_000
    assert three.width > two.width > 1000 and three.height == two.height
