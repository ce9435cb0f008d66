"""sgllie.graphs.GraphedEnhance and StaticEnhance: the same result as model.enhance, frame after frame;
plain calls where no graph can be captured (CPU tensors here, captured graphs on CUDA). On the CPU a
stand-in capture, whose replays recompute into the one output buffer as a replay overwrites it,
checks what is captured and what is not."""
from __future__ import annotations

import warnings

import pytest
import torch

import sgllie
from sgllie.graphs import GraphedEnhance, StaticEnhance
from sgllie.video import TemporalSmoother
from conftest import assert_close, stand_in_capture

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


@pytest.fixture
def captures(monkeypatch):
    """Graphs captured on the CPU through the stand-in (conftest.stand_in_capture): the list of them."""
    return stand_in_capture(monkeypatch)


def test_only_the_working_resolution_network_is_captured(captures):
    """The graph takes the downscaled image (the frame itself is never copied into it); outputs
    are new tensors, not a graph's buffer that the next call overwrites."""
    torch.manual_seed(0)
    model = sgllie.EnhanceNet(scale_factor=12).eval()
    enhance = GraphedEnhance(model)
    frames = [torch.rand(2, 3, 50, 61) for _ in range(3)]  # padded to 60 x 72 for the network
    outputs = [enhance(x) for x in frames]
    assert captures == [((2, 3, 5, 6), "cpu", 2)], "one capture, of the working-resolution network"
    with torch.inference_mode():
        for x, y in zip(frames, outputs):
            assert_close(y, model.enhance(x))


def test_adjust_factor_map_sees_its_own_copy(captures):
    """A smoother that keeps the previous frame's r (as TemporalSmoother does) keeps it intact while
    the graph's output buffer is overwritten by the next frame."""
    torch.manual_seed(0)
    model = sgllie.EnhanceNet(scale_factor=4).eval()
    enhance = GraphedEnhance(model)
    graphed_smoother, plain_smoother = TemporalSmoother(0.3), TemporalSmoother(0.3)
    for _ in range(3):
        x = torch.rand(1, 3, 24, 32) * 0.3
        brightness = [float(x.mean())]
        y = enhance(x, adjust_factor_map=lambda r: graphed_smoother(r, brightness))
        with torch.inference_mode():
            expected = model.enhance(x, adjust_factor_map=lambda r: plain_smoother(r, brightness))
        assert_close(y, expected)


def test_graphed_enhance_rejects_a_bad_frame():
    enhance = GraphedEnhance(sgllie.EnhanceNet(scale_factor=4).eval())
    with pytest.raises(ValueError, match="GraphedEnhance: x must have 3 channels"):
        enhance(torch.rand(1, 4, 16, 16))


# ----------------------------------------------------------------------------- StaticEnhance
@pytest.mark.parametrize("device", DEVICES)
def test_static_enhance_matches_the_model_in_its_fixed_buffers(device):
    """Plain on the CPU, captured on CUDA: each frame written into ``input`` gives ``model.enhance`` of
    it, in the same ``output`` tensor every call. 50 x 61: padded to multiples of 12 and cropped back."""
    torch.manual_seed(0)
    model = sgllie.EnhanceNet(scale_factor=12).to(device).eval()
    run = StaticEnhance(model, (2, 3, 50, 61), device=device)
    assert run.input.shape == (2, 3, 50, 61) and run.input.device.type == device
    for _ in range(3):
        x = torch.rand(2, 3, 50, 61, device=device)
        run.input.copy_(x)
        out = run()
        assert out is run.output
        with torch.inference_mode():
            assert_close(out.clone(), model.enhance(x))


def test_static_enhance_replays_the_whole_forward(captures):
    """One capture, of the whole forward on the full-size frame, reading ``input`` at each replay."""
    torch.manual_seed(0)
    model = sgllie.EnhanceNet(scale_factor=12).eval()
    run = StaticEnhance(model, (1, 3, 50, 61), device="cpu", warmup=3)
    frames = [torch.rand(1, 3, 50, 61) for _ in range(2)]
    for x in frames:
        run.input.copy_(x)
        with torch.inference_mode():
            assert_close(run().clone(), model.enhance(x))
    assert captures == [((1, 3, 50, 61), "cpu", 3)]


def test_a_refused_capture_warns_once_at_the_callers_line_and_runs_plainly(monkeypatch):
    stand_in_capture(monkeypatch, refuse=True)
    model = sgllie.EnhanceNet(scale_factor=4).eval()
    x = torch.rand(1, 3, 16, 20)
    with torch.inference_mode():
        expected = model.enhance(x)
    with pytest.warns(UserWarning, match=r"cannot capture the model for frames \(1, 3, 16, 20\).*no graphs here") as w:
        run = StaticEnhance(model, (1, 3, 16, 20), device="cpu")
    assert [r.filename for r in w] == [__file__]
    run.input.copy_(x)
    assert_close(run().clone(), expected)

    enhance = GraphedEnhance(model)
    with pytest.warns(UserWarning, match=r"cannot capture the model's network.*no graphs here") as w:
        assert_close(enhance(x), expected)
    assert [r.filename for r in w] == [__file__]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert_close(enhance(x), expected)
    assert not again, "one warning per shape, not per call"


@pytest.mark.parametrize("shape, dtype, match", [
    ((1, 4, 16, 16), torch.float32, "shape must be"),
    ((1, 3, 16), torch.float32, "shape must be"),
    ((1, 3, 0, 16), torch.float32, "shape must be"),
    ((1, 3, 16, 16), torch.int64, "dtype must be"),
])
def test_static_enhance_rejects_a_bad_shape_or_dtype(shape, dtype, match):
    with pytest.raises(ValueError, match=f"StaticEnhance: {match}"):
        StaticEnhance(sgllie.EnhanceNet(scale_factor=4).eval(), shape, dtype, device="cpu")


def test_static_enhance_built_in_inference_mode_takes_frames_outside_it():
    model = sgllie.EnhanceNet(scale_factor=4).eval()
    with torch.inference_mode():
        run = StaticEnhance(model, (1, 3, 16, 20))
    x = torch.rand(1, 3, 16, 20)
    run.input.copy_(x)  # an inference tensor would refuse this outside inference mode
    with torch.inference_mode():
        assert_close(run().clone(), model.enhance(x))
