"""cdcore.models.modelfiles: what a model set's files say without torch, checked against torch's reading."""
import pickle

import pytest
import torch

from cdcore.models.modelfiles import ModelError, describe_model_set, tensor_shapes
from cdcore.models.modelset import load_model_set, save_stage
from cdcore.models.nets import Decoder, Encoder, student_widths
from shared import BASE_MODELS, MODELS


def torch_description(uri) -> list[str]:
    """The per-stage lines of `cdcore models info`, counted from the loaded modules."""
    models = load_model_set(uri)
    lines = []
    for k in models.stages:
        enc, dec = models.encoder(k), models.decoder(k)
        widths = "-".join(str(w) for w in enc.widths.for_stage(k).values())
        n_enc = sum(p.numel() for n, p in enc.named_parameters() if "_aux" not in n)
        n_dec = sum(p.numel() for p in dec.parameters())
        aux = " +aux" if enc.widths.aux else ""
        lines.append(f"  stage {k}  widths {widths}{aux}  params enc {n_enc:,} dec {n_dec:,}")
    return [f"  id       {models.model_id}", *lines]


@pytest.mark.parametrize("uri", [MODELS, BASE_MODELS])
def test_published_pickles_describe_as_torch_reads_them(uri):
    text = describe_model_set(str(uri)).splitlines()
    assert text[2:3] + text[4:] == torch_description(uri)
    assert text[3] == "  stages   1,2,3,4,5"


def test_a_safetensors_set_and_a_zip_pickle(tmp_path):
    widths = student_widths(8)
    save_stage(tmp_path / "set", Encoder(2, widths), Decoder(2, widths), "div8")
    text = describe_model_set(str(tmp_path / "set")).splitlines()
    assert text[1] == "  family   div8" and text[3] == "  stages   2"
    assert text[2:3] + text[4:] == torch_description(tmp_path / "set")
    torch.save({"model": Encoder(3, widths).state_dict()}, tmp_path / "new.pth")  # zip format
    shapes = tensor_shapes((tmp_path / "new.pth").read_bytes(), "new.pth")
    assert shapes["conv31.weight"] == (32, 16, 3, 3) and shapes["conv31_aux.weight"] == (256, 32, 1, 1)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "encoder1.pth"
    bad.write_bytes(pickle.dumps({"conv11.weight": Exploit(marker)}))
    with pytest.raises(ModelError, match="not a readable model file .*open is not part of a state dict"):
        tensor_shapes(bad.read_bytes(), str(bad))
    assert not marker.exists()
