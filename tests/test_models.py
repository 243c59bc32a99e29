import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrisr.errors import ConfigError, InputError
from mrisr.inference.predict import full_grid_query
from mrisr.models import GridQuery, create_model, list_models, load_checkpoint, save_checkpoint
from mrisr.models.query import (grid_positions, relative_offset, sample_axis, sample_grid,
                                sample_points, unfold_neighbourhood)

TINY = {"G0": 8, "D": 1, "C": 2, "G": 8, "fusion_channels": 8, "fusion_convs": 1,
        "skip_hidden": 8, "attention_reduction": 4}


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("dualarbnet", **{**TINY, **kw})


@pytest.mark.parametrize("lr_shape,out_shape,ref_shape", [
    ((12, 12), (24, 24), (24, 24)), ((10, 13), (37, 29), (15, 40)), ((16, 16), (16, 16), (8, 8))])
def test_dualarbnet_and_liif_output_the_query_grid(lr_shape, out_shape, ref_shape):
    lr = torch.rand(2, 1, *lr_shape)
    ref = torch.rand(2, 1, *ref_shape)
    query = full_grid_query(lr_shape, out_shape, ref_shape)
    for sampling in ("nearest", "linear"):
        assert tiny(sampling=sampling)(lr, ref, query).shape == (2, 1, *out_shape)
    torch.manual_seed(0)
    liif = create_model("liif", G0=8, D=1, C=2, G=8, hidden=[16, 16], chunk=50)
    assert liif(lr, None, query).shape == (2, 1, *out_shape)


def test_cubic_sampling_is_keys_convolution():
    # Keys' kernel (a = -0.5) interpolates the samples and reproduces quadratics exactly away
    # from the edges; beyond the edges it replicates the edge voxels.
    x = (torch.arange(12, dtype=torch.float64) - 3.7) ** 2
    pos = torch.linspace(1, 9.99, 37, dtype=torch.float64)[None]
    torch.testing.assert_close(sample_axis(x.reshape(1, 1, 12), pos, 0, "cubic")[0, 0],
                               (pos[0] - 3.7) ** 2)
    ints = torch.arange(12, dtype=torch.float64)[None]
    torch.testing.assert_close(sample_axis(x.reshape(1, 1, 12), ints, 0, "cubic")[0, 0], x)
    flat = torch.ones(1, 2, 5, dtype=torch.float64)
    out = sample_axis(flat, torch.tensor([[-3.0, -0.4, 4.6, 9.0]], dtype=torch.float64), 0,
                      "cubic")
    torch.testing.assert_close(out, torch.ones(1, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="image_residual"):
        tiny(image_residual="quintic")


def test_grid_positions_follow_the_pixel_centre_convention():
    pos = grid_positions(4, 8)
    torch.testing.assert_close(pos, torch.tensor([-0.25, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75,
                                                  3.25], dtype=torch.float64))
    rel = relative_offset(grid_positions(10, 30), 10)
    assert rel.min() >= -1 and rel.max() < 1
    # At x3 every third output voxel sits exactly on an LR voxel centre.
    assert torch.allclose(rel[1::3], torch.zeros(10, dtype=torch.float64))


def test_separable_and_point_sampling_match_grid_sample():
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    pos = [grid_positions(7, 17)[None], grid_positions(9, 20)[None]]
    ours = sample_grid(x, pos, "linear")
    ys, xs = [(2 * p[0] + 1) / n - 1 for p, n in zip(pos, (7, 9))]
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).flip(-1)[None].expand(2, -1,
                                                                                     -1, -1)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(ours, ref)
    pts = torch.stack(torch.meshgrid(pos[0][0], pos[1][0], indexing="ij"), -1).reshape(1, -1, 2)
    pts = pts.expand(2, -1, -1)
    torch.testing.assert_close(sample_points(x, pts).transpose(1, 2).reshape(2, 3, 17, 20), ref)
    near = sample_grid(x, pos, "nearest")
    ref_near = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
    torch.testing.assert_close(near, ref_near)


def test_lr_side_linear_layers_equal_the_direct_transcription():
    # The model applies the fusion stem and the skip branch on the LR grid and resamples after;
    # with nearest sampling that must equal resampling the unfolded features first (the paper).
    model = tiny(use_reference=False)
    lr = torch.rand(1, 1, 6, 7)
    query = full_grid_query((6, 7), (15, 17))
    with torch.no_grad():
        enc = model.encode(lr)
        feat = unfold_neighbourhood(model.encoder((lr - 0.5) / 0.5))
        up = sample_grid(feat, query.target_positions, "nearest")
        torch.testing.assert_close(sample_grid(enc.target_stem, query.target_positions),
                                   model.stem_target(up), atol=1e-5, rtol=1e-5)
        skip_direct = model.skip_out(torch.relu(model.skip_mid(torch.relu(model.skip_in(up)))))
        skip_fast = sample_grid(model.skip_out(torch.relu(model.skip_mid(
            torch.relu(enc.target_skip)))), query.target_positions)
        torch.testing.assert_close(skip_fast, skip_direct, atol=1e-5, rtol=1e-5)


def test_target_and_reference_scales_are_independent_inputs():
    model = tiny().eval()
    lr = torch.rand(1, 1, 10, 10)
    full_ref = torch.rand(1, 1, 40, 40)
    coarse_ref = F.avg_pool2d(full_ref, 2)
    with torch.no_grad():
        a = model(lr, full_ref, full_grid_query((10, 10), (40, 40), (40, 40)))
        b = model(lr, coarse_ref, full_grid_query((10, 10), (40, 40), (20, 20)))
        q = full_grid_query((10, 10), (40, 40), (40, 40))
        q.reference_spacing = q.reference_spacing * 2  # only the scale input changes
        c = model(lr, full_ref, q)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    # Without the reference branch the reference can change freely.
    noref = tiny(use_reference=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(noref(lr, full_ref, full_grid_query((10, 10), (40, 40))),
                                   noref(lr, None, full_grid_query((10, 10), (40, 40))))
    with pytest.raises(ValueError, match="needs a reference"):
        model(lr, None, full_grid_query((10, 10), (40, 40)))


def test_ablation_presets_change_the_idf_input():
    assert create_model("dualarbnet_s_noscale").idf_in.in_channels == 2
    assert create_model("dualarbnet_s_nocoord").idf_in.in_channels == 4
    assert create_model("dualarbnet_s").idf_in.in_channels == 6
    assert create_model("dualarbnet_s_noref").stem_reference is None
    with pytest.raises(ValueError):
        create_model("dualarbnet", **TINY, use_scale=False, use_coord=False)


def test_reference_code_preset_has_its_size():
    n = sum(p.numel() for p in create_model("dualarbnet_ref").parameters())
    assert abs(n - 13.7e6) < 0.1e6  # docs/REFERENCE_NOTES.md: 13.7 M parameters


def test_checkpoints_describe_themselves_and_load_weights_only(tmp_path):
    model = create_model("dualarbnet_s")
    path = save_checkpoint(tmp_path / "m.pt", model, train_config={"a": 1},
                           data={"manifest_digest": "x"}, step=3)
    payload = torch.load(path, weights_only=True)
    assert payload["model"]["architecture"] == "dualarbnet"
    assert payload["model"]["preset"] == "dualarbnet_s"
    assert payload["model"]["args"]["G0"] == 32 and payload["code_version"]
    loaded = load_checkpoint(path).model
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("dualarbnet_xl")
    assert "dualarbnet_s" in list_models() and "liif_s" in list_models()


def test_grid_query_shape():
    q = GridQuery([torch.zeros(1, 5), torch.zeros(1, 7)], torch.ones(1, 2))
    assert q.shape == (5, 7)
    assert unfold_neighbourhood(torch.rand(1, 2, 4, 5, 6)).shape == (1, 54, 4, 5, 6)
    np.testing.assert_equal(unfold_neighbourhood(torch.ones(1, 1, 3, 3))[0, :, 1, 1].numpy(),
                            np.ones(9))


# -- fast paths against the direct transcriptions (docs/BENCHMARKS.md, "Speed") -----------------
def _direct_block(block, x):
    features = [x]
    for layer in block.layers:
        features.append(torch.relu(layer(torch.cat(features, dim=1))))
    return x + block.fuse(torch.cat(features, dim=1))


def _direct_rdn(rdn, x):
    shallow = rdn.sfe1(x)
    h = rdn.sfe2(shallow)
    outputs = []
    for block in rdn.blocks:
        h = _direct_block(block, h)
        outputs.append(h)
    return rdn.gff(torch.cat(outputs, dim=1)) + shallow


@pytest.mark.parametrize("channels_last", [False, True])
def test_fanned_out_dense_block_equals_concatenation_with_gradients(channels_last):
    from mrisr.models.rdn import ResidualDenseBlock
    torch.manual_seed(0)
    block = ResidualDenseBlock(2, 6, 5, 3)
    x = torch.randn(2, 6, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), _direct_block(block, x), atol=1e-5, rtol=1e-5)
    grads = []
    for f in (block, lambda t: _direct_block(block, t)):
        xi = x.clone().requires_grad_(True)
        block.zero_grad()
        (f(xi) ** 2).sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
    for fast, direct in zip(*grads):
        torch.testing.assert_close(fast, direct, atol=1e-4, rtol=1e-5)


def _direct_dualarbnet(model, lr, ref, query):
    """Dual-ArbNet as before the speed work: concatenating RDN, unfolded features, 1x1 stems."""
    from mrisr.models.dual_arbnet import Encoded

    def feats(img):
        return unfold_neighbourhood(_direct_rdn(model.encoder, (img - 0.5) / 0.5))
    t = feats(lr)
    enc = Encoded(target_stem=model.stem_target(t), target_skip=model.skip_in(t),
                  target_shape=tuple(lr.shape[2:]),
                  target_image=lr if model.image_residual else None,
                  reference_stem=model.stem_reference(feats(ref)),
                  reference_shape=tuple(ref.shape[2:]))
    x = sample_grid(enc.target_stem, query.target_positions, model.sampling) + \
        sample_grid(enc.reference_stem, query.reference_positions, model.sampling)
    h = torch.sin(model.idf_in(model._query_features(query, enc, x.dtype)))
    for layer, modulation in zip(model.fusion, model.idf):
        x = layer(x)
        h = torch.sin(modulation(h) * x[:, :x.shape[1] // 2])
    out = model.idf_out(h)
    skip = model.skip_out(torch.relu(model.skip_mid(torch.relu(enc.target_skip))))
    return out + sample_grid(skip, query.target_positions, "nearest") + \
        sample_grid(lr, query.target_positions, "cubic")


def test_dualarbnet_fast_paths_equal_the_direct_transcription_with_gradients():
    model = create_model("dualarbnet", G0=8, D=2, C=3, G=6, fusion_channels=8, fusion_convs=1,
                         skip_hidden=8, attention_reduction=4, sampling="nearest",
                         image_residual="cubic")
    torch.manual_seed(1)
    for p in model.parameters():  # weights of a trained size, not the initial ones
        p.data.normal_(0, 0.1)
    lr, ref = torch.rand(2, 1, 9, 10), torch.rand(2, 1, 17, 21)
    query = full_grid_query((9, 10), (19, 23), (17, 21))
    with torch.inference_mode():
        fast, direct = model(lr, ref, query), _direct_dualarbnet(model, lr, ref, query)
    scale = float(direct.abs().max())
    assert float((fast - direct).abs().max()) < 1e-5 * scale
    grads = []
    for f in (model, lambda *a: _direct_dualarbnet(model, *a)):
        model.zero_grad()
        (f(lr, ref, query) ** 2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for fast_g, direct_g in zip(*grads):
        torch.testing.assert_close(fast_g, direct_g, atol=1e-5 * float(direct_g.abs().max()),
                                   rtol=1e-4)


def _direct_liif(model, lr, query):
    feat = unfold_neighbourhood(_direct_rdn(model.encoder, (lr - 0.5) / 0.5))
    b, c, h, w = feat.shape
    ys, xs = query.target_positions
    points = torch.stack(torch.meshgrid(ys[0], xs[0], indexing="ij"), -1).reshape(1, -1, 2)
    points = points.expand(b, -1, -1)
    cell = (2.0 * query.target_spacing).float()[:, None, :].expand(b, points.shape[1], -1)
    flat = feat.reshape(b, c, h * w)
    preds, areas = [], []
    for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        idx = torch.floor(points) + torch.tensor([dy, dx], dtype=points.dtype)
        idx = torch.minimum(idx.clamp(min=0), torch.tensor([h - 1, w - 1], dtype=points.dtype))
        codes = torch.gather(flat, 2, (idx[..., 0] * w + idx[..., 1]).long()[:, None]
                             .expand(b, c, -1)).transpose(1, 2)
        rel = 2.0 * (points - idx)
        preds.append(model.mlp(torch.cat([codes, rel.float(), cell], -1)))
        areas.append((rel[..., 0] * rel[..., 1]).abs().float() / 4 + 1e-9)
    out = sum(p * a[..., None] for p, a in zip(preds, reversed(areas))) / sum(areas)[..., None]
    return out.transpose(1, 2).reshape(b, -1, ys.shape[1], xs.shape[1])


def test_liif_projected_codes_equal_the_direct_transcription():
    torch.manual_seed(2)
    model = create_model("liif", G0=8, D=1, C=3, G=6, hidden=[16, 12], chunk=37)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    lr = torch.rand(2, 1, 7, 9)
    query = full_grid_query((7, 9), (16, 20))
    with torch.inference_mode():
        fast, direct = model(lr, None, query), _direct_liif(model, lr, query)
    assert float((fast - direct).abs().max()) < 1e-5 * float(direct.abs().max())
