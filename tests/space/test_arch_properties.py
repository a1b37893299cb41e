"""Property test: any valid per-layer choice drawn from the catalogue's specs round-trips."""
from hypothesis import given, settings
from hypothesis import strategies as st

from attnsearch.space import MECHANISMS, ArchConfig, LayerSpec


def _value(spec):
    if spec.type == "choice":
        return st.sampled_from(spec.choices)
    if spec.power_of_two:
        lo, hi = int(spec.low).bit_length() - 1, int(spec.high).bit_length() - 1
        return st.integers(lo, hi).map(lambda e: 2 ** e)
    if spec.type == "int":
        return st.integers(int(spec.low), int(spec.high))
    return st.floats(spec.low, spec.high, allow_nan=False)


@st.composite
def layers(draw):
    name = draw(st.sampled_from(list(MECHANISMS)))
    mech = MECHANISMS[name]
    chosen = draw(st.lists(st.sampled_from(list(mech.quality_params()) or [None]), unique=True))
    params = {key: draw(_value(mech.params[key])) for key in chosen if key is not None}
    kernel = None
    if mech.tunable_params() and draw(st.booleans()):
        kernel = {"chunk_size": draw(_value(mech.params["chunk_size"]))}
    return LayerSpec(mechanism=name, params=params, kernel_config=kernel)


@settings(max_examples=60, deadline=None)
@given(st.lists(layers(), min_size=1, max_size=6), st.integers(1, 4), st.sampled_from([16, 32, 64]))
def test_round_trip_and_layout(specs, n_heads, head_dim):
    config = ArchConfig(d_model=64, n_layers=len(specs), n_heads=n_heads, head_dim=head_dim, layers=specs)
    again = ArchConfig.from_json(config.to_json())
    assert again == config
    assert again.layout_string() == "".join(MECHANISMS[s.mechanism].code for s in specs)
    for layer in again.layers:
        mech = MECHANISMS[layer.mechanism]
        assert set(layer.params) == set(mech.quality_params())           # defaults filled in
        assert mech.state_bytes(again, layer.params, 100) >= 0
        assert mech.cost(again, layer.params, 64, 1).flops > 0
