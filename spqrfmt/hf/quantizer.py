"""transformers integration: after ``import spqrfmt.hf``, ``from_pretrained`` loads a folder holding a ``.spqr`` file.

Why: users live in transformers. This module (run by ``spqrfmt.hf``) registers the
quantization method ``spqrfmt`` with transformers' public hooks
(``register_quantization_config`` / ``register_quantizer``), so a folder
written by ``spqr export-hf`` — ``config.json`` whose ``quantization_config``
is ``{"quant_method": "spqrfmt", "file": "model.spqr"}``, the ``.spqr`` file,
the tokenizer files and an empty ``model.safetensors`` (transformers' loader
insists on one) — loads with ``AutoModelForCausalLM.from_pretrained(folder)``.

transformers builds the model and, finding no tensor in the empty
safetensors file, initialises every parameter; after its loading the
quantizer puts every parameter on the meta device and fills the model from the
``.spqr`` exactly as :func:`spqrfmt.model.load_model` does (shared code:
:func:`spqrfmt.model.populate`), so the logits are those of ``load_model``.
On CUDA quantized linears stay compressed in the kernel modules; on CPU they
are decoded once. ``save_pretrained`` of such a model writes the same folder
form back without re-quantizing (:mod:`.save`). ``file`` may name a
split set's first part (its index beside it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .export import QUANT_METHOD, WEIGHTS_FILE


def _plain_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or not name.endswith(".spqr"):
        raise ValueError(f"quantization_config file must be a .spqr file name inside the model folder, got {name!r}")
    return name


@register_quantization_config(QUANT_METHOD)
class SpqrfmtConfig(QuantizationConfigMixin):
    """``quantization_config`` of a folder whose weights are one ``.spqr`` file (``file``, beside config.json).

    ``use_kernels``: keep quantized linears compressed (default: on CUDA only), as ``load_model``.
    ``format_version``: the file's [major, minor], informative.
    """

    def __init__(self, file: str = WEIGHTS_FILE, use_kernels: bool | None = None,
                 format_version: list[int] | None = None, **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.file = _plain_name(file)
        if use_kernels is not None and not isinstance(use_kernels, bool):
            raise TypeError("use_kernels must be a bool or None")
        self.use_kernels = use_kernels
        self.format_version = format_version


@register_quantizer(QUANT_METHOD)
class SpqrfmtHfQuantizer(HfQuantizer):
    """Loads the parameters of a ``from_pretrained`` model from the folder's ``.spqr`` file."""

    requires_calibration = True  # a .spqr is quantized already: this quantizer never quantizes a dense model

    def __init__(self, quantization_config: SpqrfmtConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.path: Path | None = None
        self._tied: Any = None

    def validate_environment(self, device_map: Any = None, **kwargs: Any) -> None:
        if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) > 1:
            raise ValueError("spqrfmt loads a model onto one device; pass device_map='cpu' or 'cuda:0'")

    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None,
                                             **kwargs: Any) -> Any:
        from ..paths import input_file

        if not checkpoint_files:
            raise ValueError("spqrfmt: transformers named no checkpoint file; the folder needs its model.safetensors "
                             "stub beside the .spqr (write it with spqr export-hf)")
        self.path = input_file(Path(os.path.dirname(checkpoint_files[0])) / self.quantization_config.file,
                               "spqrfmt weights file")
        model._keys_to_ignore_on_load_missing = [r".*"]  # every parameter comes from the .spqr, after loading
        # transformers would warn that both ends of a tied pair are absent from the (empty) checkpoint:
        # populate() ties them after loading; the mapping is put back then.
        self._tied = getattr(model, "all_tied_weights_keys", None)
        if self._tied is not None:
            model.all_tied_weights_keys = {}
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        import torch

        from ..model import populate
        from ..split import open_model
        from .save import attach

        assert self.path is not None
        param = next(model.parameters())
        dev, dtype = param.device, param.dtype
        use_kernels = self.quantization_config.use_kernels
        if use_kernels is None:
            use_kernels = dev.type == "cuda"
        for module in model.modules():  # forget the initialised placeholders: populate fills meta parameters
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=False)
        model._spqr_state_names = None
        with open_model(self.path) as f:
            model.spqr_load_report = populate(model, f, dtype, dev, use_kernels)
        if self._tied is not None:
            model.all_tied_weights_keys = self._tied
        model.to(dev)
        attach(model, self.path)
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True  # model.save_pretrained writes the source .spqr back, byte for byte (.save)

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict[str, Any], dict[str, str]]:
        from .save import state_dict_and_metadata

        return state_dict_and_metadata(model)

    @property
    def is_trainable(self) -> bool:
        return False


__all__ = ["QUANT_METHOD", "SpqrfmtConfig", "SpqrfmtHfQuantizer", "WEIGHTS_FILE"]
