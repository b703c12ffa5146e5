"""`module.split_batch`: the conv blocks run a training batch as chunks on threads
(`models.thread_split`): same outputs, gradients equal up to float rounding, deterministic,
one intra-op thread per worker, and off wherever it does not apply."""

import pytest
import torch

from pneumonia.models import CustomCNN
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.models.thread_split import split_run, thread_pool

NET = {"_target_": "pneumonia.models.CustomCNN", "depth": 3, "in_channels": 1, "image_size": 48}


def small_net(**kwargs):
    torch.manual_seed(0)
    return CustomCNN(depth=3, in_channels=1, image_size=48, **kwargs).eval()  # eval: no dropout


def outputs_and_grads(net, x, workers):
    net.zero_grad()
    net.split_workers = workers
    out = net(x)
    (out * torch.arange(1.0, len(x) + 1)).sum().backward()  # a different weight per image
    return out.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("workers", [2, 3])
def test_split_batch_gives_the_same_outputs_and_gradients(workers):
    net = small_net()
    x = torch.rand(7, 1, 48, 48)  # not a multiple of the workers: unequal chunks
    plain_out, plain_grads = outputs_and_grads(net, x, 0)
    out, grads = outputs_and_grads(net, x, workers)
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)
    for g, plain in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, plain, rtol=1e-4, atol=1e-6)
    # the chunks' gradients are added in chunk order: two runs are bit-identical
    again_out, again_grads = outputs_and_grads(net, x, workers)
    assert torch.equal(again_out, out)
    assert all(torch.equal(a, b) for a, b in zip(again_grads, grads, strict=True))


def test_workers_run_one_intra_op_thread_and_the_caller_keeps_its_own():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = thread_pool(2)
        assert set(pool.map(lambda _: torch.get_num_threads(), range(6))) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_split_run_calls_the_body_once_where_it_does_not_apply():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            calls.append(len(x))
            return self.conv(x)

    body = Counting()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        split_run(body, x, 2)  # scoring: nothing to split the backward of
    split_run(body, x[:1], 2)  # fewer images than workers
    split_run(body, x.clone().requires_grad_(), 2)  # the input wants its own gradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        split_run(body, x, 2)  # autocast's state is per thread
    assert calls == [4, 1, 4, 4]
    calls.clear()
    split_run(body, x, 2)
    assert sorted(calls) == [2, 2]


class _Trainer:
    precision = "32-true"


def module(split_batch, monkeypatch, *, native_bf16=False, precision="32-true", **net):
    import pneumonia.models.classifier as classifier

    monkeypatch.setattr(classifier, "cpu_has_native_bf16", lambda: native_bf16)
    m = PneumoniaClassifier(net={**NET, **net}, split_batch=split_batch)
    trainer = _Trainer()
    trainer.precision = precision
    m._trainer = trainer  # type: ignore[assignment]
    return m


@pytest.mark.parametrize(
    "split_batch, kwargs, expected",
    [
        (True, {}, 2),
        ("auto", {}, 2),  # a CPU without native bf16
        ("auto", {"native_bf16": True}, 0),  # measured to pay only without it
        (True, {"native_bf16": True}, 2),
        (False, {}, 0),
        (True, {"precision": "bf16-mixed"}, 0),
        (True, {"batch_norm": True}, 0),  # batch norm would see a chunk, not the batch
    ],
)
def test_the_module_splits_only_where_it_applies(split_batch, kwargs, expected, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        net_kwargs = {k: v for k, v in kwargs.items() if k == "batch_norm"}
        other = {k: v for k, v in kwargs.items() if k != "batch_norm"}
        m = module(split_batch, monkeypatch, **other, **net_kwargs)
        assert m.split_workers() == expected
        m.on_fit_start()
        assert m.net.split_workers == expected
        m.on_fit_end()  # scoring after training runs the plain path
        assert m.net.split_workers == 0
        torch.set_num_threads(1)
        assert m.split_workers() == 0  # one intra-op thread: nothing to split over
    finally:
        torch.set_num_threads(before)


def test_a_compiled_module_does_not_split(monkeypatch):
    m = module(True, monkeypatch)
    m.hparams.compile = True
    assert m.split_workers() == 0


def test_grad_cam_during_training_sees_the_unsplit_net():
    # the Grad-CAM callback runs inside fit, where the net's split is on: its hooks must see one graph
    from pneumonia.explain.gradcam import gradcam

    net = small_net()
    x = torch.rand(4, 1, 48, 48)
    plain, _ = gradcam(net, x)
    net.split_workers = 2
    split, _ = gradcam(net, x)
    torch.testing.assert_close(split, plain)


def test_a_hooked_layer_turns_the_split_off_in_training():
    net = small_net().train()
    net.split_workers = 2
    seen = []
    handle = net.features[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
    net(torch.rand(4, 1, 48, 48))
    handle.remove()
    assert seen == [4]  # one graph, the whole batch
