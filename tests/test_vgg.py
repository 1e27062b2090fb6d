"""The torchvision VGG-19 converter: features equal torchvision's (no download: random weights)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from cdcore.training import vgg


@pytest.fixture(scope="module")
def torchvision_vgg(tmp_path_factory):
    """A randomly initialised torchvision vgg19 and its weights in a file, as a user would have
    them (only `features`: the converter ignores the 400 MB classifier)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg19().eval()
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, path)
    return model, path


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_converted_encoder_matches_torchvision_features(torchvision_vgg, k):
    model, path = torchvision_vgg
    encoder = vgg.encoder_from_torchvision(vgg.load_torchvision_weights(str(path)), k)
    for layer in model.features:
        if isinstance(layer, torch.nn.Conv2d):
            # Our encoders pad by reflection (as the WCT models do); torchvision pads with zeros.
            # Padding alike, every pixel must agree.
            layer.padding_mode = "reflect"
    x = torch.rand(2, 3, 48, 48)
    mean = torch.tensor(vgg.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(vgg.IMAGENET_STD)[:, None, None]
    relu = vgg.torchvision_index()[f"conv{k}1"] + 1
    with torch.no_grad():
        expected = model.features[: relu + 1]((x - mean) / std)
        torch.testing.assert_close(encoder(x), expected, rtol=1e-4, atol=1e-5)


def test_torchvision_index_names_the_relu_layers():
    index = vgg.torchvision_index()
    assert [index[f"conv{k}1"] + 1 for k in range(1, 6)] == [1, 6, 11, 20, 29]


def test_a_state_dict_that_is_not_vgg19_is_refused():
    with pytest.raises(ValueError, match="features.0.weight"):
        vgg.encoder_from_torchvision({}, 1)
    bad = {"features.0.weight": torch.zeros(64, 1, 3, 3), "features.0.bias": torch.zeros(64)}
    with pytest.raises(ValueError, match=r"\(64, 1, 3, 3\)"):
        vgg.encoder_from_torchvision(bad, 1)
