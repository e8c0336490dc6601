"""diffmem's DiT against the reference facebookresearch/DiT (PyTorch), through diffmem.torch_dit; no torch needed.

tests/fixtures/dit_reference.npz holds small random reference models (state dicts), inputs and the PyTorch outputs,
written by tests/fixtures/make_dit_reference.py (patch 2 and 4, with and without classes, learn_sigma both ways).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import pruning, torch_dit
from diffmem.models import dit as D

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "dit_reference.npz")


def _load():
    z = np.load(FIXTURE)
    meta = json.loads(bytes(z["meta"]).decode())
    cases = {}
    for name, kw in meta.items():
        pre = f"{name}/sd/"
        sd = {k[len(pre):]: z[k].astype(np.float32) for k in z.files if k.startswith(pre)}
        sd["pos_embed"] = z[f"{name}/pos_embed"]
        cases[name] = dict(kw=kw, sd=sd, **{k: z[f"{name}/{k}"] for k in ("x", "u", "t", "y", "out")})
    return cases


CASES = _load()


def _model(case, **over):
    kw = case["kw"]
    fields = torch_dit.infer_dit_fields(case["sd"], heads=kw["num_heads"])
    fields.update(over)
    return D.DiT(**fields)


def _apply(model, params, case, head_mask=None):
    x = jnp.asarray(case["x"].astype(np.float32).transpose(0, 2, 3, 1))          # NCHW -> NHWC
    y = jnp.asarray(case["y"]) if model.num_classes else None
    return np.asarray(jax.jit(lambda p, x, u, y, m: model.apply({"params": p}, x, u, y, head_mask=m))(
        params, x, jnp.asarray(case["u"]), y, head_mask))


def _num_classes(case):
    kw = case["kw"]
    return 0 if kw["num_classes"] == 1 and kw["class_dropout_prob"] == 0 else kw["num_classes"]


def test_fixture_is_small_and_times_are_exact():
    assert os.path.getsize(FIXTURE) < 512 * 1024
    for case in CASES.values():
        # the reference saw t = float32(1000 u): exactly diffmem's TIME_SCALE * u in float32
        np.testing.assert_array_equal(case["t"], (np.float32(D.TIME_SCALE) * case["u"]).astype(np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_infer_fields(name):
    case = CASES[name]
    kw = case["kw"]
    f = torch_dit.infer_dit_fields(case["sd"], heads=kw["num_heads"])
    expect_classes = _num_classes(case) if kw["class_dropout_prob"] > 0 or kw["num_classes"] == 1 else \
        kw["num_classes"] - 1   # no null row: a table of K rows reads as K - 1 classes + null (documented)
    assert f == dict(image_size=kw["input_size"], channels=kw["in_channels"], patch=kw["patch_size"],
                     hidden=kw["hidden_size"], depth=kw["depth"], heads=kw["num_heads"],
                     mlp_ratio=kw.get("mlp_ratio", 4.0), num_classes=expect_classes,
                     learn_sigma=kw["learn_sigma"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_pytorch(name):
    case = CASES[name]
    model = _model(case, num_classes=_num_classes(case))
    params = torch_dit.state_dict_to_params(case["sd"], model)
    ref = case["out"].transpose(0, 2, 3, 1)                                       # NCHW -> NHWC
    out = _apply(model, params, case)
    assert out.shape == ref.shape and np.abs(ref).max() > 1.0                     # a non-trivial output
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5 * np.abs(ref).max())
    if model.num_classes and case["kw"]["class_dropout_prob"] > 0:
        assert case["y"][-1] == model.num_classes                                 # the null label is covered


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    case = CASES[name]
    model = _model(case, num_classes=_num_classes(case))
    params = torch_dit.state_dict_to_params(case["sd"], model)
    sd2 = torch_dit.params_to_state_dict(model, params)
    # params -> state dict -> params is exact
    params2 = torch_dit.state_dict_to_params(sd2, model)
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, model.image_size, model.image_size,
                                                                 model.channels)), jnp.zeros((1,)))["params"])
    assert set(sd2) == set(case["sd"])
    table = "y_embedder.embedding_table.weight"
    for k, v in sd2.items():
        if k in (table, "t_embedder.mlp.2.bias") and model.num_classes == 0:
            continue  # the one-row table is folded into the bias: checked below
        if k == table and v.shape[0] == case["sd"][k].shape[0] + 1:              # a zero null row was added
            np.testing.assert_array_equal(v[-1], 0.0)
            v = v[:-1]
        np.testing.assert_array_equal(v, case["sd"][k], err_msg=k)
    if model.num_classes == 0:
        np.testing.assert_array_equal(sd2["y_embedder.embedding_table.weight"], 0.0)
        np.testing.assert_allclose(sd2["t_embedder.mlp.2.bias"], case["sd"]["t_embedder.mlp.2.bias"]
                                   + case["sd"]["y_embedder.embedding_table.weight"][0], rtol=1e-6)


def test_table_without_null_row_gets_zero_null():
    case = CASES["cond_p4_nonull"]
    model = _model(case, num_classes=3)
    params = torch_dit.state_dict_to_params(case["sd"], model)
    table = params["y_embedder"]["embedding"]
    np.testing.assert_array_equal(table[:3], case["sd"]["y_embedder.embedding_table.weight"])
    np.testing.assert_array_equal(table[3], 0.0)


def test_pruned_model_exports_as_zero_padded_heads():
    """remove_heads -> params_to_state_dict pads the removed heads with zeros: loaded into the full-width model,
    the outputs equal the full model with the same heads gated off."""
    case = CASES["cond_p4_nonull"]
    model = _model(case, num_classes=3)
    params = torch_dit.state_dict_to_params(case["sd"], model)
    mask = np.ones((model.depth, model.max_heads), np.float32)
    mask[0, 1] = mask[0, 3] = 0.0
    mask[2, :] = 0.0                                                             # a block with no head left
    small, small_params = pruning.remove_heads(model, params, mask)
    assert small.head_counts == (2, 4, 0)
    sd = torch_dit.params_to_state_dict(small, small_params)
    np.testing.assert_array_equal(sd["blocks.2.attn.proj.weight"], 0.0)
    back = torch_dit.state_dict_to_params(sd, model)
    ref = _apply(model, params, case, jnp.asarray(mask))
    np.testing.assert_allclose(_apply(model, back, case), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(_apply(small, small_params, case), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_infer_known_sizes_and_errors():
    case = CASES["uncond_p2"]
    with pytest.raises(ValueError, match="heads must be given"):
        torch_dit.infer_dit_fields(case["sd"])
    # DiT-S: heads from the DiT table (depth 12, hidden 384)
    sd = {"x_embedder.proj.weight": np.zeros((384, 4, 2, 2)), "blocks.0.mlp.fc1.weight": np.zeros((1536, 384)),
          "final_layer.linear.weight": np.zeros((32, 384)), "y_embedder.embedding_table.weight": np.zeros((1001, 384)),
          **{f"blocks.{l}.attn.qkv.weight": np.zeros((1152, 384)) for l in range(12)}}
    assert torch_dit.infer_dit_fields(sd) == dict(image_size=None, channels=4, patch=2, hidden=384, depth=12,
                                                  heads=6, mlp_ratio=4.0, num_classes=1000, learn_sigma=True)


def test_state_dict_errors():
    case = CASES["cond_p2_sigma"]
    model = _model(case)
    bad = dict(case["sd"])
    bad["blocks.1.mlp.fc1.weight"] = bad["blocks.1.mlp.fc1.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        torch_dit.state_dict_to_params(bad, model)
    with pytest.raises(ValueError, match="not used by this model"):
        torch_dit.state_dict_to_params({**case["sd"], "extra.weight": np.zeros(3)}, model)
    with pytest.raises(ValueError, match="lacks 'final_layer.linear.bias'"):
        torch_dit.state_dict_to_params({k: v for k, v in case["sd"].items() if k != "final_layer.linear.bias"},
                                       model)
    with pytest.raises(ValueError, match="pos_embed"):
        torch_dit.state_dict_to_params(case["sd"], model.clone(image_size=16))
    with pytest.raises(ValueError, match="label table"):
        torch_dit.state_dict_to_params(case["sd"], model.clone(num_classes=7))
    with pytest.raises(ValueError, match="1-row label table"):
        torch_dit.state_dict_to_params(case["sd"], model.clone(num_classes=0))
    with pytest.raises(ValueError, match="heads in every block"):
        torch_dit.state_dict_to_params(case["sd"], model.clone(heads=(2, 1), head_dim=8))
