"""dtype conversions of the exporter against torch, on every kind of f32 bit pattern."""

import numpy as np
import pytest
from tierlm.dtypes import bf16_to_f32, convert, f32_to_bf16
from tierlm.errors import InvalidArgumentError

torch = pytest.importorskip("torch")


def patterns():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 100_003, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0,
            0x80000000,
            1,
            0x007FFFFF,
            0x7F7FFFFF,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0x3F808000,
            0x3F818000,
            0x3F80FFFF,
            0x7F7F8000,
        ],  # ties round to even, overflow edge
        dtype=np.uint32,
    )
    return np.concatenate([bits, special]).view(np.float32)


def test_f32_to_bf16_matches_torch():
    values = patterns()
    ours = f32_to_bf16(values)
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs.view(np.uint16)[~nan])
    assert np.isnan(bf16_to_f32(ours[nan])).all()


def test_bf16_to_f32_is_exact():
    bits = np.arange(2**16, dtype=np.uint16)
    theirs = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_to_f32(bits).view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize(
    "src,dst", [("f32", "f16"), ("bf16", "f16"), ("f16", "bf16"), ("bf16", "f32")]
)
def test_convert_matches_torch(src, dst):
    rng = np.random.default_rng(3)
    names = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    source = torch.from_numpy(rng.standard_normal(4099).astype(np.float32) * 100).to(names[src])
    raw = source.view(torch.uint8).numpy() if src != "f32" else source.numpy().view(np.uint8)
    ours = convert(raw, src, dst).view(np.uint8)
    theirs = source.to(names[dst]).view(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_f16_overflow_names_the_tensor():
    raw = np.array([1.0, -7e4, 3.0], np.float32).view(np.uint8)
    with pytest.raises(InvalidArgumentError, match="tensor layers.3.x: value 70000 overflows f16"):
        convert(raw, "f32", "f16", "layers.3.x")
    assert np.isinf(convert(np.array([np.inf], np.float32).view(np.uint8), "f32", "f16")).all()
