import pytest
import torch
from model_support import randomize_adapters
from segment_anything.modeling.image_encoder import Block

from napari_msa.engine import AdapterConfig, build_sam, get_config
from napari_msa.engine.network.adapters import (
    PROMPT_EMBEDDING_KEYS,
    AdaptedBlock,
    adapter_parameter_names,
    is_trainable,
    set_depth_slices,
    set_trainable,
)


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _pair(adapter: AdapterConfig):
    config = get_config("tiny")
    plain = build_sam(config)
    adapted = build_sam(config, adapter)
    adapted.load_state_dict(plain.state_dict(), strict=False)
    return plain, adapted


@pytest.mark.parametrize("adapter", [AdapterConfig(), AdapterConfig(depth=True, decoder=True),
                                     AdapterConfig(blocks=(1,))])
def test_fresh_adapters_are_identity(adapter):
    plain, adapted = _pair(adapter)
    x = torch.randn(2, 3, 256, 256)
    set_depth_slices(adapted, 2)
    with torch.no_grad():
        a, b = plain.image_encoder(x), adapted.image_encoder(x)
        assert torch.equal(a, b)
        sparse, dense = plain.prompt_encoder(points=(torch.tensor([[[30.0, 90.0]]]), torch.tensor([[1]])),
                                             boxes=None, masks=None)
        pe = plain.prompt_encoder.get_dense_pe()
        out_plain = plain.mask_decoder(a[:1], pe, sparse, dense, True)
        out_adapted = adapted.mask_decoder(b[:1], pe, sparse, dense, True)
    for p, q in zip(out_plain, out_adapted):
        assert torch.equal(p, q)


def test_adapters_change_output_once_trained():
    plain, adapted = _pair(AdapterConfig(depth=True, decoder=True))
    randomize_adapters(adapted)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert not torch.allclose(plain.image_encoder(x), adapted.image_encoder(x))


def test_adapter_placement_and_names():
    sam = build_sam(get_config("tiny"), AdapterConfig(blocks=(1,), depth=True))
    assert not isinstance(sam.image_encoder.blocks[0], AdaptedBlock)
    assert isinstance(sam.image_encoder.blocks[1], AdaptedBlock) and isinstance(sam.image_encoder.blocks[1], Block)
    names = adapter_parameter_names(sam)
    # the reference code's key names, so its checkpoints load unchanged
    assert "image_encoder.blocks.1.Space_Adapter.D_fc1.weight" in names
    assert "image_encoder.blocks.1.MLP_Adapter.D_fc2.bias" in names
    assert "image_encoder.blocks.1.Depth_Adapter.D_fc1.weight" in names
    assert not any(".blocks.0." in n for n in names)
    fc1 = sam.image_encoder.blocks[1].Space_Adapter.D_fc1
    assert fc1.out_features == int(64 * 0.25)


def test_depth_adapter_mixes_slices_only_when_enabled():
    sam = build_sam(get_config("tiny"), AdapterConfig(depth=True))
    randomize_adapters(sam)
    x = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        set_depth_slices(sam, 1)
        independent = sam.image_encoder(x)
        set_depth_slices(sam, 4)
        mixed = sam.image_encoder(x)
        # the first slice's features now depend on the other slices
        x2 = x.clone()
        x2[3] = torch.randn(3, 256, 256)
        mixed2 = sam.image_encoder(x2)
    assert not torch.allclose(independent, mixed)
    assert not torch.allclose(mixed[0], mixed2[0])
    set_depth_slices(sam, 3)
    with pytest.raises(ValueError, match="multiple of depth_slices"):
        sam.image_encoder(x)


def test_depth_branch_groups_same_token_across_slices():
    """Slices of one volume mix; two volumes in one batch never do (unpartitioned tokens)."""
    sam = build_sam(get_config("tiny"), AdapterConfig(depth=True))
    randomize_adapters(sam)
    set_depth_slices(sam, 2)
    x = torch.randn(4, 3, 256, 256)
    x_changed = x.clone()
    x_changed[3] = torch.randn(3, 256, 256)  # second volume only
    with torch.no_grad():
        a, b = sam.image_encoder(x), sam.image_encoder(x_changed)
    assert torch.equal(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])


def test_trainable_weights_and_counts():
    """``set_trainable`` (what tuning uses) follows ``is_trainable``; the counts see what it set."""
    sam = build_sam(get_config("tiny"), AdapterConfig(depth=True, decoder=True))
    names = dict(sam.named_parameters())
    adapters = {n for n in names if "Adapter" in n}
    depth = {n for n in adapters if "Depth_Adapter" in n}
    prompt_side = {n for n in names if n.startswith("mask_decoder.") or n.startswith(PROMPT_EMBEDDING_KEYS)}
    assert depth and adapters - depth and prompt_side - adapters and prompt_side & adapters  # decoder adapters

    def trainable() -> set[str]:
        return {n for n, p in names.items() if p.requires_grad}

    params = set_trainable(sam, adapters=True)
    assert trainable() == adapters - depth and len(params) == len(adapters - depth)  # 2D: no depth adapters
    set_trainable(sam, adapters=False, decoder=True)
    assert trainable() == prompt_side  # the decoder's own adapters train with the decoder
    set_trainable(sam, adapters=True, decoder=True, depth=True)
    assert trainable() == adapters | prompt_side
    assert trainable() == {n for n in names if is_trainable(n, adapters=True, decoder=True, depth=True)}
    set_trainable(sam, adapters=False, everything=True)
    assert trainable() == set(names)

    set_trainable(sam, adapters=True, depth=True)
    assert trainable() == adapters
    trainable_count, total = count_parameters(sam)
    assert trainable_count == sum(names[n].numel() for n in adapters) and 0 < trainable_count < total


def test_vit_b_adapter_count_matches_reference_arithmetic():
    """Two adapters per block in 2D: 12 × 2 × 295,872 (the reference code's shapes)."""
    from napari_msa.engine.network.adapters import Adapter

    assert sum(p.numel() for p in Adapter(768).parameters()) == 295_872
    with torch.device("meta"):  # vit_b's shapes without its memory
        sam = build_sam(get_config("vit_b"), AdapterConfig())
    set_trainable(sam, adapters=True)
    trainable, total = count_parameters(sam)
    assert trainable == 12 * 2 * 295_872  # 7.10 M
    assert total - trainable == 93_735_472  # SAM ViT-B itself
