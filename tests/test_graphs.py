"""sgllie.graphs.GraphedEnhance: the same result as model.enhance, frame after frame; plain calls
where no graph can be captured (CPU tensors here, captured graphs on CUDA)."""
from __future__ import annotations

import pytest
import torch

import sgllie
from sgllie.graphs import GraphedEnhance
from conftest import assert_close

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_graphed_enhance_matches_the_model(device):
    torch.manual_seed(0)
    model = sgllie.EnhanceNet(scale_factor=12).to(device).eval()
    enhance = GraphedEnhance(model)
    for shape in [(1, 3, 48, 60), (1, 3, 48, 60), (2, 3, 36, 50), (1, 3, 48, 60)]:
        x = torch.rand(shape, device=device)
        with torch.inference_mode():
            expected = model.enhance(x)
        assert_close(enhance(x).clone(), expected)
    if device == "cuda":
        assert len(enhance._graphs) == 2, "one graph per shape"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uncapturable_model_falls_back_with_one_warning(monkeypatch):
    model = sgllie.EnhanceNet(scale_factor=12).cuda().eval()
    enhance = GraphedEnhance(model)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: (_ for _ in ()).throw(RuntimeError("no graphs")))
    x = torch.rand(1, 3, 24, 24, device="cuda")
    with pytest.warns(UserWarning, match="cannot capture"):
        y = enhance(x)
    with torch.inference_mode():
        assert_close(y, model.enhance(x))
