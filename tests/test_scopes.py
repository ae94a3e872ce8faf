"""NNCF 2 scope matching, shared by quantization (operation names) and pruning (module names)."""

from detcompress.compression.scopes import match_scopes

OPERATIONS = ["backbone/stem/conv/conv/conv2d/0", "bbox_head/multi_level_conv_cls/0/conv2d/0"]
MODULES = ["backbone.stem.conv.conv", "backbone.stage1.0.conv", "neck.out_convs.0.conv"]


def test_exact_names_and_regexes() -> None:
    matched, unmatched = match_scopes(
        ["backbone/stem/conv/conv/conv2d/0", "{re}bbox_head/.*", "backbone/nowhere"], OPERATIONS
    )
    assert matched == {
        "backbone/stem/conv/conv/conv2d/0": ["backbone/stem/conv/conv/conv2d/0"],
        "{re}bbox_head/.*": ["bbox_head/multi_level_conv_cls/0/conv2d/0"],
    }
    assert unmatched == ["backbone/nowhere"]


def test_module_scopes_cover_their_submodules_only_when_asked() -> None:
    assert match_scopes(["backbone"], MODULES) == ({}, ["backbone"])
    matched, unmatched = match_scopes(["backbone", "back"], MODULES, submodules=True)
    assert matched == {"backbone": ["backbone.stem.conv.conv", "backbone.stage1.0.conv"]}
    assert unmatched == ["back"]  # a prefix of a name is not a parent module
