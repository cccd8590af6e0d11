"""An adapter must fit the served base model's linear layers (issue 13 item 15)."""

from __future__ import annotations

import pytest
import torch

from soppu.adapter.fits import check_fits
from soppu.errors import AdapterError
from soppu.models import linear_shapes
from tests.support.adapter_factory import MODULES, make_adapter


class _Attention(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(width, width, bias=False)
        self.v_proj = torch.nn.Linear(width, width // 2, bias=False)


def _base(width: int, layers: int = 2) -> torch.nn.Module:
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList()
    for _ in range(layers):
        layer = torch.nn.Module()
        layer.self_attn = _Attention(width)
        model.model.layers.append(layer)
    return model


def test_linear_shapes_are_d_out_by_d_in() -> None:
    shapes = linear_shapes(_base(16))
    assert shapes["model.layers.1.self_attn.v_proj"] == (8, 16)
    assert "model.layers.0.self_attn" not in shapes


def test_an_adapter_fits_its_base_and_not_another() -> None:
    adapter = make_adapter(MODULES)
    check_fits(adapter, dict(MODULES), "tiny")
    wider = {m: (d_out * 2, d_in * 2) for m, (d_out, d_in) in MODULES.items()}
    with pytest.raises(AdapterError) as excinfo:
        check_fits(adapter, wider, "wide")
    assert excinfo.value.code == "shape_mismatch" and "'wide'" in excinfo.value.message
    with pytest.raises(AdapterError) as excinfo:
        check_fits(adapter, {}, "empty")
    assert excinfo.value.code == "shape_mismatch" and "not linear layers" in excinfo.value.message
