"""diffmem.checkpoints and diffmem.convert against files torch itself wrote (tests/fixtures/dit_pt, made by
tests/fixtures/make_dit_pt.py): the torch-free .pt reader and writer, DiT import with forward outputs equal to
PyTorch's (learned-sigma channels included), the saved model directory, the command, and the export read back by
PyTorch's reference DiT (needs a python with torch and the reference models.py: DIFFMEM_TORCH_PYTHON,
DIFFMEM_DIT_REFERENCE; skipped otherwise - the layout checks against torch's own files always run)."""
import collections
import json
import os
import pickletools
import struct
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import checkpoints, convert, pruning, torch_dit
from diffmem.models import dit as D

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "dit_pt")
Z = np.load(os.path.join(FIX, "outputs.npz"))
META = json.loads(bytes(Z["meta"]).decode())
CASES = META["cases"]
# the globals torch.load(weights_only=True) allows that a state dict needs
TORCH_SAFE_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage"}


def _import(name, **kw):
    return torch_dit.import_dit(os.path.join(FIX, f"{name}.pt"), heads=CASES[name]["num_heads"], **kw)


def _nhwc(a):
    return jnp.asarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def _forward(model, params, name, head_mask=None):
    """The jit-compiled forward (a first eager call costs more: every op compiles on its own)."""
    y = jnp.asarray(Z[f"{name}/y"]) if model.num_classes else None
    fn = jax.jit(lambda p, x, u, y, m: model.apply({"params": p}, x, u, y, head_mask=m))
    return np.asarray(fn(params, _nhwc(Z[f"{name}/x"]), jnp.asarray(Z[f"{name}/u"]), y, head_mask))


# ------------------------------------------------------------------------------------------------ reading

def test_read_pt_rebuilds_every_tensor_exactly():
    obj = checkpoints.read_pt(os.path.join(FIX, "tensors.pt"))
    tensors = obj["tensors"]
    for k in [f for f in Z.files if f.startswith("tensors/")]:
        got, want = tensors[k.split("/")[1]], Z[k]
        assert got.shape == want.shape, k
        if k.endswith("bf16"):
            assert got.dtype.name == "bfloat16"
        else:
            assert got.dtype == want.dtype, k
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=k)
        assert got.flags.c_contiguous
    assert tensors["i64"][0] == 2 ** 40 and tensors["transposed"].shape == (4, 3)
    np.testing.assert_array_equal(tensors["shared_b"], [2.0, 4.0, 6.0])     # a strided view of a shared storage
    assert obj["nested"]["list"][1:] == [3, "x"] and obj["nested"]["tuple"] == (1.5, None)
    assert obj["size"] == (2, 3)


def test_train_checkpoint_takes_ema_like_find_model():
    obj = checkpoints.read_pt(os.path.join(FIX, "cond_p4_rgb.pt"))
    assert set(obj) == {"model", "ema", "opt", "args"}
    assert obj["args"] == {"model": "DiT-test", "image_size": 8, "epochs": 1}        # argparse.Namespace
    assert set(obj["opt"]) == {"state", "param_groups"} and obj["opt"]["param_groups"][0]["lr"] == 1e-4
    sd, key = checkpoints.state_dict_of(obj)
    assert key == "ema" and isinstance(sd["pos_embed"], np.ndarray)
    model_sd, _ = checkpoints.state_dict_of(obj, "model")
    np.testing.assert_allclose(model_sd["x_embedder.proj.bias"], sd["x_embedder.proj.bias"] + 0.01, atol=2e-4)  # + 1 AdamW step
    with pytest.raises(ValueError, match=r"entry 'opt' is not a state dict"):
        checkpoints.state_dict_of(obj, "opt")
    with pytest.raises(ValueError, match=r"no such entry \(top level: \['args', 'ema', 'model', 'opt'\]\)"):
        checkpoints.state_dict_of(obj, "weights")


def test_ddp_prefix_removed():
    sd, key = checkpoints.state_dict_of(checkpoints.read_pt(os.path.join(FIX, "uncond_p2_gray.pt")))
    assert key == "state_dict" and "x_embedder.proj.weight" in sd and not any(k.startswith("module.") for k in sd)


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_forward_matches_pytorch(name):
    model, params, info = _import(name)
    kw = CASES[name]
    assert model.learn_sigma and model.out_channels == 2 * kw["in_channels"]
    assert model.num_classes == (0 if kw["class_dropout_prob"] == 0 else kw["num_classes"])
    assert info["num_params"] == D.count_params(params)
    ref = Z[f"{name}/out"].transpose(0, 2, 3, 1)                   # (b, H, W, 2C): eps and the sigma channels
    out = _forward(model, params, name)
    assert out.shape == ref.shape and np.abs(ref[..., kw["in_channels"]:]).max() > 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5 * np.abs(ref).max())


def test_read_errors(tmp_path):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02\x8a\x0a" + b"\x00" * 20)
    with pytest.raises(ValueError, match="legacy torch < 1.6"):
        checkpoints.read_pt(legacy)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(ValueError, match="holds a os.system object"):
        checkpoints.read_pt(evil)
    cut = tmp_path / "cut.pt"
    good = zipfile.ZipFile(os.path.join(FIX, "tensors.pt"))
    with zipfile.ZipFile(cut, "w") as zf:
        for n in good.namelist():
            zf.writestr(n, good.read(n)[:4] if n.endswith("data/0") else good.read(n))
    with pytest.raises(ValueError, match="storage 0: 4 bytes for 12 x float32"):
        checkpoints.read_pt(cut)
    with pytest.raises(ValueError, match=r"image_size=64 disagrees .* input size = image size / 8 = 8"):
        _import("cond_p2_latent", image_size=64)


# ------------------------------------------------------------------------------------------------ writing

def _records(path_or_bytes):
    import io
    raw = open(path_or_bytes, "rb").read() if isinstance(path_or_bytes, str) else path_or_bytes
    zf = zipfile.ZipFile(io.BytesIO(raw))
    out = {}
    for info in zf.infolist():
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        out[info.filename.split("/", 1)[1]] = dict(start=start, stored=info.compress_type == zipfile.ZIP_STORED)
    return out, zf


def _globals(pkl: bytes) -> set:
    return {str(arg) for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}


def test_written_pt_has_torch_layout_and_values():
    """Our export of the params imported from a torch-written state dict: the same tensors (exactly), the same
    records, every record stored and 64-byte aligned like torch's, only torch's weights_only-safe globals."""
    path = os.path.join(FIX, "cond_p2_latent.pt")
    theirs_sd, _ = checkpoints.state_dict_of(checkpoints.read_pt(path))
    model, params, _ = _import("cond_p2_latent")
    blob = checkpoints.pt_bytes(torch_dit.params_to_state_dict(model, params))
    mine, zf = _records(blob)
    theirs, tzf = _records(path)
    for recs in (mine, theirs):
        assert all(r["stored"] and r["start"] % checkpoints.PT_ALIGN == 0 for r in recs.values())
    strip = lambda recs: {n for n in recs if not n.startswith("data/")}
    assert strip(mine) == strip(theirs)
    assert sum(n.startswith("data/") for n in mine) == len(theirs_sd)
    assert zf.read("archive/version") == tzf.read("cond_p2_latent/version")
    assert _globals(zf.read("archive/data.pkl")) == TORCH_SAFE_GLOBALS
    assert TORCH_SAFE_GLOBALS <= _globals(tzf.read("cond_p2_latent/data.pkl"))


def test_write_read_round_trip(tmp_path):
    model, params, _ = _import("cond_p2_latent")
    theirs, _ = checkpoints.state_dict_of(checkpoints.read_pt(os.path.join(FIX, "cond_p2_latent.pt")))
    checkpoints.write_pt(tmp_path / "x.pt", torch_dit.params_to_state_dict(model, params))
    back = checkpoints.read_pt(tmp_path / "x.pt")
    assert isinstance(back, collections.OrderedDict) and list(back) == list(
        torch_dit.params_to_state_dict(model, params))
    assert set(back) == set(theirs)
    for k, v in theirs.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    sd = {"s": np.float32(2.5) * np.ones((), np.float32), "t": np.arange(6.0).reshape(2, 3).T,
          "i": np.array([2 ** 40, -3]), "b": np.array([True]), "e": np.zeros((0, 2), np.float16)}
    checkpoints.write_pt(tmp_path / "y.pt", sd)
    back = checkpoints.read_pt(tmp_path / "y.pt")
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(ValueError, match="dtype complex64 has no torch storage"):
        checkpoints.pt_bytes({"c": np.zeros(2, np.complex64)})


# ------------------------------------------------------------------------------------ saved model directory

def _pruned(model, params):
    mask = np.ones((model.depth, model.max_heads), np.float32)
    mask[0, 1] = 0.0
    mask[1, :] = 0.0                                                    # a block with no head left
    return pruning.remove_heads(model, params, mask), mask


def test_save_load_model_round_trip(tmp_path):
    model, params, _ = _import("cond_p2_latent")
    (small, small_params), mask = _pruned(model, params)
    assert small.head_counts == (1, 0)
    for d, (m, p) in {"full": (model, params), "pruned": (small, small_params)}.items():
        checkpoints.save_model(tmp_path / d, m, p, note=d)
        m2, p2 = checkpoints.load_model(tmp_path / d)
        assert m2 == m.clone() and checkpoints.model_info(tmp_path / d)["note"] == d
        jax.tree.map(np.testing.assert_array_equal, p2, jax.tree.map(np.asarray, p))
    np.testing.assert_allclose(_forward(*checkpoints.load_model(tmp_path / "pruned"), "cond_p2_latent"),
                               _forward(model, params, "cond_p2_latent", jnp.asarray(mask)), rtol=1e-5, atol=1e-5)
    m16, _ = checkpoints.load_model(tmp_path / "full", dtype="bfloat16")
    assert m16.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="not a saved diffmem model"):
        checkpoints.load_model(tmp_path)
    (tmp_path / "pruned" / "params.msgpack").write_bytes((tmp_path / "full" / "params.msgpack").read_bytes())
    with pytest.raises(ValueError, match="SHA-1 differs"):
        checkpoints.load_model(tmp_path / "pruned")
    with pytest.raises(ValueError, match="the parameters do not match the DiT"):
        checkpoints.save_model(tmp_path / "bad", small, params)


def test_loads_prune_dit_export_layout(tmp_path):
    """prune_dit's exported/<method>_eta<eta>/ (model.json {"model": fields, ...}, flax to_bytes params of an
    unconditional eps DiT) loads too."""
    import flax
    from diffmem import image_diffusion as idf
    model = idf.build_model((8, 8, 1), patch=2, hidden=16, depth=2, heads=2)
    params = jax.tree.map(lambda a: a + 0.1, idf.init_params(model, jax.random.key(0)))
    (small, small_params), mask = _pruned(model, params)

    def write(d, p):
        os.makedirs(d)
        (d / "params.msgpack").write_bytes(flax.serialization.to_bytes(p))
        (d / "model.json").write_text(json.dumps(dict(run="b0_r0_importance_eta0.2", model=dict(
            image_size=8, channels=1, patch=2, hidden=16, depth=2, heads=list(small.heads), head_dim=small.head_dim,
            mlp_ratio=4.0), param_count=D.count_params(p))))
    write(tmp_path / "exp", small_params)
    got, got_params = checkpoints.load_model(tmp_path / "exp")
    assert got == small.clone() and got.head_counts == (1, 0)
    jax.tree.map(np.testing.assert_array_equal, got_params, jax.tree.map(np.asarray, small_params))
    write(tmp_path / "sigma", _pruned(*_import("uncond_p2_gray")[:2])[0][1])   # a learn_sigma tree: not this DiT
    with pytest.raises(ValueError, match="the parameters do not match"):
        checkpoints.load_model(tmp_path / "sigma")


def test_convert_command(tmp_path, capsys):
    src = os.path.join(FIX, "cond_p4_rgb.pt")
    assert convert.main(["--checkpoint", src, "--out", str(tmp_path / "m"), "--heads", "2"]) == 0
    assert "entry 'ema'" in capsys.readouterr().out
    info = checkpoints.model_info(tmp_path / "m")
    assert info["key"] == "ema" and info["time_input"] == "discrete" and info["source_sha1"] == convert.file_sha1(src)
    model, params = checkpoints.load_model(tmp_path / "m")
    np.testing.assert_allclose(_forward(model, params, "cond_p4_rgb"), Z["cond_p4_rgb/out"].transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-4)
    assert convert.main(["--model", str(tmp_path / "m"), "--export_pt", str(tmp_path / "e.pt")]) == 0
    back = checkpoints.read_pt(tmp_path / "e.pt")
    sd, _ = checkpoints.state_dict_of(checkpoints.read_pt(src))
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    assert json.load(open(tmp_path / "e.pt.json"))["reference_kwargs"] == dict(
        CASES["cond_p4_rgb"], mlp_ratio=4.0)
    assert convert.main(["--checkpoint", src, "--out", str(tmp_path / "x")]) == 2          # heads unknown
    assert "heads must be given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["--checkpoint", src])


# -------------------------------------------------------------------------------------- back into PyTorch

def _torch_python():
    exe = os.environ.get("DIFFMEM_TORCH_PYTHON")
    if exe is None:
        try:
            import torch  # noqa: F401
            exe = sys.executable
        except ImportError:
            return None
    return exe


REFERENCE = os.environ.get("DIFFMEM_DIT_REFERENCE", "")


@pytest.mark.skipif(_torch_python() is None or not os.path.isfile(REFERENCE),
                    reason="needs a python with torch (DIFFMEM_TORCH_PYTHON, or torch here) and the reference "
                           "facebookresearch/DiT models.py (DIFFMEM_DIT_REFERENCE)")
def test_export_loads_into_pytorch_reference(tmp_path):
    """Exported .pt files (a conditional learn_sigma model, the same model pruned to 1 + 0 heads, an unconditional
    one) load into models.DiT with torch.load(weights_only=True) + load_state_dict(strict=True) and give diffmem's
    outputs; forward_with_cfg on the pruned export equals diffmem.guidance."""
    from diffmem import guidance
    model, params, _ = _import("cond_p2_latent")
    (small, small_params), _ = _pruned(model, params)
    umodel, uparams, _ = _import("uncond_p2_gray")
    jobs, expect = {}, {}
    for name, src, m, p in (("full", "cond_p2_latent", model, params), ("pruned", "cond_p2_latent", small,
                                                                         small_params),
                            ("uncond", "uncond_p2_gray", umodel, uparams)):
        kwargs = torch_dit.export_dit(tmp_path / f"{name}.pt", m, p)
        inputs = {k: Z[f"{src}/{k}"].astype(np.float32) if k.startswith("x") else Z[f"{src}/{k}"]
                  for k in ("x", "t", "y", "x_half", "t_half", "y_half")}
        if not m.num_classes:
            inputs["y"] = np.zeros_like(inputs["y"])              # the exported one-row table: label 0
        np.savez(tmp_path / f"{name}_in.npz", **inputs)
        jobs[name] = dict(pt=str(tmp_path / f"{name}.pt"), kwargs=kwargs, inputs=str(tmp_path / f"{name}_in.npz"),
                          scale=4.0 if m.num_classes else None)
        expect[f"{name}/out"] = _forward(m, p, src).transpose(0, 3, 1, 2)
        if m.num_classes:
            u = jnp.asarray(Z[f"{src}/u"][:META["half"]])
            expect[f"{name}/cfg"] = np.asarray(jax.jit(guidance.guided_output, static_argnums=(0,))(
                m, p, _nhwc(Z[f"{src}/x_half"]), u, jnp.asarray(Z[f"{src}/y_half"]), 4.0)).transpose(0, 3, 1, 2)
    (tmp_path / "job.json").write_text(json.dumps(jobs))
    worker = os.path.join(os.path.dirname(__file__), "fixtures", "torch_forward.py")
    r = subprocess.run([_torch_python(), worker, "--reference", REFERENCE, "--job", str(tmp_path / "job.json"),
                        "--out", str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert set(got.files) == set(expect)
    for k, want in expect.items():
        g = got[k][:len(want)]
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=2e-5 * np.abs(want).max(), err_msg=k)
    assert np.abs(got["pruned/out"] - got["full/out"]).max() > 0.1        # pruning changed the function
