"""Build SAM2's video predictor from its packaged configs, with a memory-budgeted feature cache.

Hydra stays in this module. :class:`CachedVideoPredictor` is upstream's ``SAM2VideoPredictor``
with one change: image-encoder features are kept in an LRU cache with a byte budget instead of
only for the last frame, so a correction re-propagates without re-encoding slices. Features
are identical either way, so results equal upstream's.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS

from ..errors import ModelError
from ..models.weights import WeightsManager
from .config import EngineConfig


class FeatureCache:
    """LRU cache of per-slice backbone features within ``budget_bytes``.

    Positional encodings depend only on the feature size, so one copy serves every slice.
    """

    def __init__(self, budget_bytes: float):
        self.budget = float(budget_bytes)
        self.entries: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self.pos_enc: list[torch.Tensor] | None = None
        self.nbytes = 0
        self.slice_bytes = 0  # bytes of one slice's features (the last one stored)
        self.hits = 0
        self.misses = 0
        self.stored = 0  # slices put here, i.e. slices the image encoder ran on for this cache

    @staticmethod
    def _size(tensors: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    def get(self, idx: int) -> list[torch.Tensor] | None:
        entry = self.entries.get(idx)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(idx)
        return entry

    def __contains__(self, idx: int) -> bool:  # a look that counts neither hit nor miss
        return idx in self.entries

    def slices_that_fit(self) -> int:
        """How many slices' features fit in the budget (at least 1; known after the first slice)."""
        return max(1, int(self.budget // self.slice_bytes)) if self.slice_bytes else 1

    def has_room(self) -> bool:
        """True if one more slice fits without evicting one."""
        return self.slice_bytes > 0 and self.nbytes + self.slice_bytes <= self.budget

    def put(self, idx: int, fpn: list[torch.Tensor]) -> None:
        size = self._size(fpn)
        self.slice_bytes = size
        self.stored += 1
        if idx in self.entries:
            self.nbytes -= self._size(self.entries.pop(idx))
        self.entries[idx] = fpn
        self.nbytes += size
        while self.entries and self.nbytes > self.budget and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= self._size(old)

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


_sam_heads = threading.local()  # CachedVideoPredictor.recording_sam_heads: per thread (a predictor may be shared)


class CachedVideoPredictor(SAM2VideoPredictor):
    """Upstream's video predictor with a budgeted feature cache and an encoder-call counter."""

    encoder_calls: int = 0  # slices encoded
    encoder_forwards: int = 0  # forward passes of the image encoder (one per batch)
    compiled_batch: int = 0  # the propagation batch size a compiled model pads to (0: not compiled)

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        cache: FeatureCache | None = inference_state.get("feature_cache")
        if cache is None:  # used like upstream (e.g. init_state on a JPEG folder)
            return super()._get_image_feature(inference_state, frame_idx, batch_size)
        fpn = cache.get(frame_idx)
        if fpn is None:
            fpn = self.encode_slices(inference_state, [frame_idx])[0]
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in fpn],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in cache.pos_enc],
        }
        features = self._prepare_backbone_features(expanded)
        # the image tensor itself is never read by the callers (they unpack it as `_`)
        return (torch.empty(batch_size, 3, 0, 0),) + features

    def encode_slices(self, inference_state, frame_indices: list[int]) -> list[list[torch.Tensor]]:
        """Run the image encoder on these slices in one batched forward pass, cache their features
        and return them (one list of feature levels per slice).

        The encoder does not depend on SAM2's memory, so slices can be encoded before they are tracked.
        A compiled model is always given the same batch size (a short batch is padded with its last
        slice), so it compiles once per batch size.
        """
        cache: FeatureCache = inference_state["feature_cache"]
        if not frame_indices:
            return []
        images = inference_state["images"]
        batch = [images[i] for i in frame_indices]
        if len(batch) > 1:
            batch += [batch[-1]] * max(0, self.compiled_batch - len(batch))
        backbone_out = self.forward_image(torch.stack(batch).to(inference_state["device"]).float())
        self.encoder_calls += len(frame_indices)
        self.encoder_forwards += 1
        levels = list(backbone_out["backbone_fpn"])
        out = []
        for n, idx in enumerate(frame_indices):
            # a copy per slice, so one cached slice does not keep the whole batch's storage alive
            fpn = [lvl[n : n + 1].clone() for lvl in levels] if len(batch) > 1 else levels
            cache.put(idx, fpn)
            out.append(fpn)
        pos = [p[:1] for p in backbone_out["vision_pos_enc"]]
        if cache.pos_enc is None or [p.shape for p in cache.pos_enc] != [p.shape for p in pos]:
            cache.pos_enc = [p.clone() for p in pos]
        return out

    def _forward_sam_heads(self, *args, **kwargs):
        out = super()._forward_sam_heads(*args, **kwargs)
        sink = getattr(_sam_heads, "sink", None)
        if sink is not None:  # every mask the SAM head made (low resolution logits) and its predicted IoU
            sink.append((out[0].detach(), out[2].detach()))
        return out

    @contextlib.contextmanager
    def recording_sam_heads(self) -> Iterator[list]:
        """Collect, on this thread, what the SAM head makes inside the block: ``(masks [B, M, h, w],
        ious [B, M])`` per call; M is 3 for an ambiguous single click (upstream keeps only the best)."""
        sink: list = []
        previous = getattr(_sam_heads, "sink", None)
        _sam_heads.sink = sink
        try:
            yield sink
        finally:
            _sam_heads.sink = previous

    # Upstream stores memory features as bfloat16 and so only runs under bf16 autocast. Without
    # autocast (float32 on CPU), hand them back as float32: the same values, in a dtype the
    # float32 memory attention accepts.
    def _run_single_frame_inference(self, inference_state, *args, **kwargs):
        current_out, pred_masks = super()._run_single_frame_inference(inference_state, *args, **kwargs)
        feats = current_out.get("maskmem_features")
        if feats is not None and not _autocast_on(inference_state["device"]):
            current_out["maskmem_features"] = feats.float()
        return current_out, pred_masks

    def _run_memory_encoder(self, inference_state, *args, **kwargs):
        feats, pos = super()._run_memory_encoder(inference_state, *args, **kwargs)
        if not _autocast_on(inference_state["device"]):
            feats = feats.float()
        return feats, pos


class CompiledVideoPredictor(CachedVideoPredictor, SAM2VideoPredictorVOS):
    """Ours with upstream's ``vos_optimized`` changes: the same forward passes (cloned outputs for
    ``torch.compile``) and its parts compiled, with the same compile settings as upstream
    (``SAM2VideoPredictorVOS``), plus the image encoder (upstream's ``compile_image_encoder``).
    Compiling waits for :meth:`compile_parts`, after the model is on its device, and prints nothing."""

    def _compile_all_components(self):  # upstream compiles (and prints) while building
        pass

    def compile_parts(self, device: torch.device, encode_batch: int) -> None:
        # upstream's "max-autotune" tunes GPU kernels; on a CPU it only adds minutes of tuning
        mode = "max-autotune" if device.type == "cuda" else None
        self.compiled_batch = int(encode_batch)
        self.image_encoder.forward = torch.compile(self.image_encoder.forward, mode=mode, fullgraph=True, dynamic=False)
        self.memory_encoder.forward = torch.compile(self.memory_encoder.forward, mode=mode, fullgraph=True, dynamic=False)
        # the number of memories varies from slice to slice
        self.memory_attention.forward = torch.compile(self.memory_attention.forward, mode=mode, fullgraph=True, dynamic=True)
        self.sam_prompt_encoder.forward = torch.compile(self.sam_prompt_encoder.forward, mode=mode, fullgraph=True, dynamic=False)
        self.sam_mask_decoder.forward = torch.compile(self.sam_mask_decoder.forward, mode=mode, fullgraph=True, dynamic=False)


def _autocast_on(device: torch.device) -> bool:
    return torch.is_autocast_enabled(torch.device(device).type)


# ---------------------------------------------------------------------------- building


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} asked for, but CUDA is not available here; use device='cpu' or 'auto'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device {name!r} asked for, but Apple MPS is not available here; use device='cpu' or 'auto'")
    return dev


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN uses it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # a torch without these probes: stay on float32
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. ``auto`` is the dtype policy (measured; README "Speed"):

    * CUDA, compute capability 8.0 and newer (Ampere, Hopper, ...): bfloat16, as upstream SAM2 runs;
    * older CUDA GPUs (no bf16 units): float16;
    * CPU with AVX512-BF16 or AMX: bfloat16 (the image encoder is 1.5-2.2x faster than float32 here);
    * other CPUs and Apple MPS: float32.

    Results stay within the tolerance that ``tests/test_encode_speedups.py`` states of float32's.
    """
    if name == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return torch.bfloat16 if major >= 8 else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


#: slices per image-encoder forward pass during propagation when ``encode_batch`` is 0, by device
#: type, from ``benchmarks/bench_encode_batch.py``: on CPU a batch is slower per slice
#: than single slices (512 px, bf16: 0.183 s a slice alone, 0.201 in fours), so 1. CUDA: not yet
#: measured (no GPU lent), so 1 as well, until the benchmark says otherwise.
ENCODE_BATCH_DEFAULT = {"cpu": 1, "cuda": 1, "mps": 1}


def resolve_encode_batch(value: int, device: torch.device) -> int:
    return int(value) if value else ENCODE_BATCH_DEFAULT.get(device.type, 1)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _has_cuda_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except Exception:
        return False
    return True


def model_overrides(config: EngineConfig, device: torch.device) -> dict[str, Any]:
    """Config overrides: upstream's video post-processing, our predictor class, the image size."""
    image_size = config.resolved_image_size
    feat = image_size // 16
    cls = CompiledVideoPredictor if config.compile else CachedVideoPredictor
    out: dict[str, Any] = {
        "model._target_": f"{cls.__module__}.{cls.__name__}",
        # as upstream's build_sam2_video_predictor(apply_postprocessing=True)
        "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
        "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
        "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
        "model.binarize_mask_from_pts_for_mem_enc": True,
        # hole filling needs SAM2's CUDA-only extension; without it upstream skips it with a warning
        "model.fill_hole_area": 8 if (device.type == "cuda" and _has_cuda_extension()) else 0,
        # a correction on a propagated slice becomes a conditioning slice, so it holds on re-propagation
        "model.add_all_frames_to_correct_as_cond": True,
        "model.image_size": image_size,
        "model.memory_attention.layer.self_attention.feat_sizes": [feat, feat],
        "model.memory_attention.layer.cross_attention.feat_sizes": [feat, feat],
    }
    for item in config.extra_overrides:
        key, _, value = item.lstrip("+").partition("=")
        import yaml

        out[key] = yaml.safe_load(value)
    return out


def compose_model(config_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model section of a config (packaged config name or a .yaml path), overrides applied and
    interpolations resolved, as a plain tree that :func:`check_model_tree` has checked: hydra may
    instantiate it as it is."""
    import sam2  # noqa: F401  (registers the packaged configs with hydra)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(config_name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            cfg = OmegaConf.load(path)
        except Exception as exc:  # yaml's scanner/parser errors, OmegaConf's grammar errors
            raise ModelError(f"SAM2 config {path} is not valid YAML ({type(exc).__name__}: {str(exc)[:200]})") from None
    else:
        from hydra import compose

        try:
            cfg = compose(config_name=config_name)
        except Exception as exc:
            raise ModelError(f"SAM2 config {config_name!r} not found ({exc}); name a packaged config or a .yaml file") from None
    if not OmegaConf.is_dict(cfg) or "model" not in cfg or not OmegaConf.is_dict(cfg.model):
        raise ModelError(f"SAM2 config {config_name!r} has no 'model' section; it is not a SAM2 model config")
    # first as written (before any resolver runs), then as hydra will see it
    check_model_tree(OmegaConf.to_container(cfg.model, resolve=False), config_name, resolved=False)
    try:
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        model = OmegaConf.to_container(cfg.model, resolve=True)
    except OmegaConfBaseException as exc:
        raise ModelError(
            f"SAM2 config {config_name!r} cannot be resolved ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "fix the interpolation it names"
        ) from None
    check_model_tree(model, config_name)
    return model


#: the classes a model config may build, by their exact qualified names: SAM2's model classes as its
#: packaged configs name them (plus ``Attention``, RoPEAttention's base). The root may also name
#: upstream's video predictors; it is always built as one of ours (:func:`model_overrides`). Nothing is
#: imported by a name from a config.
ALLOWED_TARGETS = (
    "sam2.modeling.sam2_base.SAM2Base",
    "sam2.modeling.backbones.image_encoder.ImageEncoder",
    "sam2.modeling.backbones.image_encoder.FpnNeck",
    "sam2.modeling.backbones.hieradet.Hiera",
    "sam2.modeling.position_encoding.PositionEmbeddingSine",
    "sam2.modeling.memory_attention.MemoryAttention",
    "sam2.modeling.memory_attention.MemoryAttentionLayer",
    "sam2.modeling.sam.transformer.Attention",
    "sam2.modeling.sam.transformer.RoPEAttention",
    "sam2.modeling.memory_encoder.MemoryEncoder",
    "sam2.modeling.memory_encoder.MaskDownSampler",
    "sam2.modeling.memory_encoder.Fuser",
    "sam2.modeling.memory_encoder.CXBlock",
)
#: constructor arguments no config may set: Hiera's ``weights_path`` opens a path or URL and unpickles it
REFUSED_ARGUMENTS = frozenset({"weights_path"})


def allowed_classes() -> dict[str, type]:
    """:data:`ALLOWED_TARGETS` and our predictor classes, each name mapped to its class (checked to be
    the class's own ``module.qualname``, the name hydra's locator finds it by)."""
    import importlib

    classes: dict[str, type] = {}
    for name in ALLOWED_TARGETS:
        module, _, attr = name.rpartition(".")
        classes[name] = getattr(importlib.import_module(module), attr)
    for cls in (SAM2VideoPredictor, SAM2VideoPredictorVOS, CachedVideoPredictor, CompiledVideoPredictor):
        classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    for name, cls in classes.items():
        if not isinstance(cls, type) or f"{cls.__module__}.{cls.__qualname__}" != name:
            raise ModelError(f"allowed config class {name} is {cls!r} in this sam2 version; update ALLOWED_TARGETS")
    return classes


def constructor_arguments(cls: type) -> frozenset[str]:
    """Keyword arguments ``cls(...)`` accepts: its ``__init__``'s named parameters, and where that passes
    ``**kwargs`` on, those of the next ``__init__`` up its MRO (stopping at ``torch.nn.Module``)."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object):
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names)


def check_model_tree(node: Any, config_name: str, where: str = "model", resolved: bool = True) -> None:
    """Hydra's ``_target_`` calls whatever it names: refuse, before anything is instantiated, a model
    config that names anything but :func:`allowed_classes` (by exact name), a keyword that is not a
    constructor argument of its class (or is in :data:`REFUSED_ARGUMENTS`), hydra's instantiation
    options (``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``) and, once resolved, text
    containing ``${`` (hydra would resolve it again while instantiating)."""
    classes = allowed_classes()

    def refuse(what: str, fix: str) -> None:
        raise ModelError(f"SAM2 config {config_name!r}: {what}; {fix}")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            cls, arguments = None, frozenset()
            if "_target_" in node:
                target = node["_target_"]
                cls = classes.get(target) if isinstance(target, str) else None
                if cls is None:
                    refuse(f"{where}._target_ {target!r} is not one of SAM2's model classes, so it is not built",
                           "a config may name only these: " + ", ".join(ALLOWED_TARGETS))
                arguments = constructor_arguments(cls)  # once per node, not once per keyword
            for key, value in node.items():
                k = str(key)
                if k != "_target_" and k.startswith("_") and k.endswith("_"):
                    refuse(f"{where}.{k} is a hydra instantiation option, which model configs may not use", "remove it")
                if cls is not None and k != "_target_":
                    if k in REFUSED_ARGUMENTS:
                        refuse(f"{where}.{k} would load a file while the model is built", "remove it and give the weights as the checkpoint")
                    if k not in arguments:
                        refuse(f"{where}.{k} is not an argument of {cls.__name__}", "remove it or correct its spelling")
                if k != "_target_":
                    walk(value, f"{where}.{k}")
        elif isinstance(node, list):
            for n, item in enumerate(node):
                walk(item, f"{where}[{n}]")
        elif resolved and isinstance(node, str) and "${" in node:
            refuse(f"{where} {node[:80]!r} holds '${{', which hydra would resolve again while building", "remove it")

    if not isinstance(node, dict) or "_target_" not in node:
        refuse(f"{where} has no _target_", "name SAM2's model class (sam2.modeling.sam2_base.SAM2Base) as the packaged configs do")
    walk(node, where)


def load_checkpoint(model: torch.nn.Module, path: str | Path, name: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} holds no SAM2 state dict (expected a dict with a 'model' entry)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(
            f"checkpoint {path} does not fit model {name} (wrong architecture: {str(exc).splitlines()[1:2]}); "
            "pick the config that matches the checkpoint"
        ) from None
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not fit model {name} (wrong architecture: {len(missing)} missing keys "
            f"e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]}); pick the config that matches"
        )


def build_predictor(config: EngineConfig, progress: bool = False) -> CachedVideoPredictor:
    """Build the model described by ``config`` (downloading its checkpoint if needed)."""
    spec = config.spec()
    device = resolve_device(config.device)
    ckpt_path = None
    if not config.random_weights:
        # find the weights before building anything heavy
        ckpt_path = Path(config.checkpoint) if config.checkpoint else WeightsManager().ensure(spec, progress=progress)
        if not ckpt_path.is_file():
            raise ModelError(f"checkpoint {ckpt_path} does not exist")
    tree = compose_model(spec.config, model_overrides(config, device))
    from hydra.utils import instantiate

    with _seeded(config.seed):
        try:
            model = instantiate(tree, _recursive_=True)
        except Exception as exc:  # values of the wrong type or shape for SAM2's classes
            cause = exc.__cause__ or exc
            raise ModelError(
                f"SAM2 config {spec.config!r} does not build a model ({type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}); "
                "compare its values with sam2's packaged configs"
            ) from None
    if ckpt_path is not None:
        load_checkpoint(model, ckpt_path, spec.name)
    model = model.to(device).eval()
    if config.compile:
        model.compile_parts(device, resolve_encode_batch(config.encode_batch, device))
    return model


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
