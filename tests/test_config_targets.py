"""A model config (``--config FILE.yaml``, EngineConfig ``config_file``/``extra_overrides``) may build SAM2's
model classes only: no other ``_target_``, no keyword its class does not take, no hydra instantiation
options, nothing that appears only after interpolation (issue 19, item 1).

Before (the check accepted any name starting with `sam2.modeling.`): `...torch.load` (weights_only false)
unpickled a file that ran code, `...torch.save`, `...torch.builtins.open` and `...torch.hub.load` (a local
hubconf.py) wrote files, and the model was then built; `...torch.os.system` and `...builtins.exec` were
stopped only by hydra's own blocklist, with a traceback. Every test asserts its marker file does not exist."""

import glob
import os
from pathlib import Path

import pytest

from sam2volume.errors import ModelError

SAM2_ROOT = Path(__import__("importlib").util.find_spec("sam2").origin).parent
PACKAGED = sorted(os.path.relpath(f, SAM2_ROOT) for f in glob.glob(str(SAM2_ROOT / "**" / "*.yaml"), recursive=True))
TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _overrides():
    import torch
    from sam2_helpers import engine_config

    from sam2volume.engine.predictor import model_overrides

    return model_overrides(engine_config(), torch.device("cpu"))


def _hostile_config(tmp_path, key, node, base=TINY):
    """A copy of a packaged config with ``node`` set at ``key`` (a dotted path inside it)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(SAM2_ROOT / base)
    OmegaConf.update(cfg, key, node, force_add=True)
    path = tmp_path / "hostile.yaml"
    OmegaConf.save(cfg, path)
    return path


def _build(config_file, **kw):
    from sam2_helpers import engine_config

    from sam2volume.engine.predictor import build_predictor

    return build_predictor(engine_config(config_file=str(config_file), **kw))


class _RunsOnUnpickle:
    """Pickled into a file; unpickling it (torch.load(weights_only=False)) creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_config_is_checked_and_model_configs_pass(tmp_path, name):
    """All of sam2's packaged model configs pass the check, by name and as a --config file; its training
    config has no model section and is refused as before."""
    from sam2volume.engine.predictor import compose_model

    copy = tmp_path / Path(name).name
    copy.write_text((SAM2_ROOT / name).read_text())
    if "training" in name:
        for config in (name, str(copy)):
            with pytest.raises(ModelError, match="has no 'model' section"):
                compose_model(config, _overrides())
        return
    for config in (name, str(copy)):
        tree = compose_model(config, _overrides())
        assert tree["_target_"] == "sam2volume.engine.predictor.CachedVideoPredictor"


@pytest.mark.parametrize("name", ["configs/sam2.1/sam2.1_hiera_t.yaml", "configs/sam2/sam2_hiera_t.yaml"])
def test_packaged_configs_still_build(tmp_path, name):
    copy = tmp_path / "mine.yaml"
    copy.write_text((SAM2_ROOT / name).read_text())
    model = _build(copy)
    assert type(model).__name__ == "CachedVideoPredictor"


def test_allowed_names_are_the_classes_hydra_finds():
    """Each allowed name is its class's own module.qualname and hydra's locator finds that very class."""
    from hydra._internal.utils import _locate

    from sam2volume.engine.predictor import allowed_classes

    for name, cls in allowed_classes().items():
        assert _locate(name) is cls


def _hostile_targets(tmp_path):
    marker = tmp_path / "marker"
    pickle_file = tmp_path / "evil.pt"
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef x():\n    return 1\n")
    return marker, {
        "torch.load": {"_target_": "sam2.modeling.sam2_base.torch.load", "f": str(pickle_file), "weights_only": False},
        "torch.save": {"_target_": "sam2.modeling.sam2_base.torch.save", "obj": 1, "f": str(marker)},
        "torch.hub.load": {"_target_": "sam2.modeling.sam2_base.torch.hub.load", "repo_or_dir": str(hub), "model": "x",
                           "source": "local", "trust_repo": True},
        "os.system": {"_target_": "sam2.modeling.sam2_base.torch.os.system", "command": f"touch {marker}"},
        "logging.os.system": {"_target_": "sam2.modeling.backbones.hieradet.logging.os.system", "command": f"touch {marker}"},
        "builtins.open": {"_target_": "sam2.modeling.sam2_base.torch.builtins.open", "file": str(marker), "mode": "w"},
        "builtins.exec": {"_target_": "sam2.modeling.sam2_base.torch.builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
        "hydra.utils.call": {"_target_": "hydra.utils.call", "config": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}},
        "hydra.utils.get_method": {"_target_": "hydra.utils.get_method", "path": "os.system"},
        "hydra.utils.instantiate": {"_target_": "hydra.utils.instantiate", "_recursive_": False,
                                    "config": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}},
        "prefix only": {"_target_": "sam2.modeling.sam2_base", "f": str(marker)},
        "not a string": {"_target_": ["sam2.modeling.memory_encoder.CXBlock"]},
    }, pickle_file


@pytest.mark.parametrize("case", ["torch.load", "torch.save", "torch.hub.load", "os.system", "logging.os.system",
                                  "builtins.open", "builtins.exec", "hydra.utils.call", "hydra.utils.get_method",
                                  "hydra.utils.instantiate", "prefix only", "not a string"])
def test_targets_that_reach_torch_os_builtins_or_hydra_are_refused(tmp_path, case):
    """Before: every `sam2.modeling.`-prefixed name passed, so these loaded a pickle, wrote files or ran commands."""
    import torch

    marker, nodes, pickle_file = _hostile_targets(tmp_path)
    torch.save(_RunsOnUnpickle(marker), pickle_file)
    assert not marker.exists()
    config = _hostile_config(tmp_path, "model.image_encoder.scalp", nodes[case])
    with pytest.raises(ModelError, match=r"model\.image_encoder\.scalp\._target_ .* is not one of SAM2's model classes"):
        _build(config)
    assert not marker.exists()


@pytest.mark.parametrize("option, value", [("_args_", [256]), ("_partial_", True), ("_recursive_", False), ("_convert_", "all")])
def test_hydra_instantiation_options_are_refused(tmp_path, option, value):
    """Before: `_args_`/`_partial_`/`_recursive_`/`_convert_` passed through to hydra (e.g. `_partial_` made the
    fuser's layer a functools.partial, `_args_` sets arguments by position)."""
    config = _hostile_config(tmp_path, f"model.memory_encoder.fuser.layer.{option}", value)
    with pytest.raises(ModelError, match=rf"model\.memory_encoder\.fuser\.layer\.{option} is a hydra instantiation option"):
        _build(config)


def test_keywords_must_be_constructor_arguments(tmp_path):
    """Before: an unknown keyword reached the class and failed with hydra's traceback; a keyword of the
    class that loads a file (Hiera's weights_path: any path or URL, unpickled) was used."""
    config = _hostile_config(tmp_path, "model.image_encoder.trunk.not_an_argument", 1)
    with pytest.raises(ModelError, match=r"model\.image_encoder\.trunk\.not_an_argument is not an argument of Hiera"):
        _build(config)
    config = _hostile_config(tmp_path, "model.image_encoder.trunk.weights_path", str(tmp_path / "weights.pt"))
    with pytest.raises(ModelError, match=r"model\.image_encoder\.trunk\.weights_path would load a file"):
        _build(config)
    # the root takes SAM2Base's and the video predictor's arguments (through **kwargs), nothing else
    config = _hostile_config(tmp_path, "model.evil", 1)
    with pytest.raises(ModelError, match=r"model\.evil is not an argument of SAM2Base"):
        _build(config)


def test_a_target_inside_a_plain_dict_argument_is_checked(tmp_path):
    """Before: a `_target_` nested in a plain dict argument (sam_mask_decoder_extra_args) was instantiated."""
    marker = tmp_path / "marker"
    node = {"x": {"_target_": "sam2.modeling.sam2_base.torch.save", "obj": 1, "f": str(marker)}}
    config = _hostile_config(tmp_path, "model.sam_mask_decoder_extra_args", node)
    with pytest.raises(ModelError, match=r"sam_mask_decoder_extra_args\.x\._target_ .* is not one of"):
        _build(config)
    assert not marker.exists()


@pytest.mark.parametrize("escape", ["", "\\"])
def test_targets_made_by_interpolation_are_refused(tmp_path, escape):
    """Interpolations are resolved before the check: a `${oc.decode:...}` that makes a `_target_` node is
    refused, and so is text still holding `${` after resolution (hydra resolves its copy again). Before: the
    check saw only the unresolved text; the first failed inside OmegaConf with a traceback, the second was
    passed to the model as a string."""
    marker = tmp_path / "marker"
    text = f"{escape}${{oc.decode:'{{_target_: sam2.modeling.sam2_base.torch.save, obj: 1, f: {marker}}}'}}"
    config = _hostile_config(tmp_path, "model.image_encoder.scalp", text)
    with pytest.raises(ModelError, match=r"model\.image_encoder\.scalp"):
        _build(config)
    assert not marker.exists()


def test_interpolated_target_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2VOLUME_TEST_TARGET", "sam2_base.torch.save")
    config = _hostile_config(tmp_path, "model.image_encoder.scalp",
                             {"_target_": "sam2.modeling.${oc.env:SAM2VOLUME_TEST_TARGET}", "obj": 1, "f": str(tmp_path / "m")})
    with pytest.raises(ModelError, match="is not one of SAM2's model classes"):
        _build(config)
    assert not (tmp_path / "m").exists()


def test_extra_overrides_are_checked_too(tmp_path):
    """Before: EngineConfig.extra_overrides were applied after the check."""
    from sam2_helpers import engine_config

    from sam2volume.engine.predictor import build_predictor

    marker = tmp_path / "marker"
    override = f"model.image_encoder.scalp={{_target_: sam2.modeling.sam2_base.torch.save, obj: 1, f: {marker}}}"
    with pytest.raises(ModelError, match="is not one of SAM2's model classes"):
        build_predictor(engine_config(extra_overrides=[override]))
    assert not marker.exists()


def test_values_of_the_wrong_type_give_a_model_error(tmp_path):
    config = _hostile_config(tmp_path, "model.image_encoder.trunk.stages", "abc")
    with pytest.raises(ModelError, match="does not build a model"):
        _build(config)


def test_cli_refuses_a_hostile_config_with_exit_2(tmp_path, totalseg, capsys):
    """Before: the torch.save target wrote its file, then hydra's traceback ended the command."""
    from sam2volume.cli import main

    marker = tmp_path / "marker"
    config = _hostile_config(tmp_path, "model.image_encoder.scalp",
                             {"_target_": "sam2.modeling.sam2_base.torch.save", "obj": 1, "f": str(marker)})
    out = tmp_path / "out" / "seg.nii.gz"
    examples = Path(__file__).resolve().parents[1] / "examples"
    args = ["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(examples / "prompts_ct_abdomen.json"),
            "-o", str(out), "--random-weights", "--config", str(config), "--image-size", "128", "--device", "cpu", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not one of SAM2's model classes" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()


def test_server_custom_config_is_checked_before_listening(tmp_path):
    """`serve --checkpoint F --config C` with a hostile config exits 2 with the check's one sentence before it
    listens (not at the first session), and the config's target never runs."""
    import subprocess
    import sys

    marker = tmp_path / "marker"
    config = _hostile_config(tmp_path, "model.image_encoder.scalp",
                             {"_target_": "sam2.modeling.sam2_base.torch.save", "obj": 1, "f": str(marker)})
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"never read: the config is refused first")
    ready = tmp_path / "ready.json"
    proc = subprocess.run([sys.executable, "-m", "sam2volume", "serve", "--port", "0", "--checkpoint", str(ckpt),
                           "--config", str(config), "--ready-file", str(ready)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "is not one of SAM2's model classes" in proc.stderr and "Traceback" not in proc.stderr
    assert not ready.exists() and not marker.exists()
