"""A transformers model that holds one module's weights at a time.

The equivalence check runs the model on a probe batch, once per weight set. Loading a whole
model into torch would need 4 bytes per parameter (14 GB for a 7B in bf16 upcast to fp32 is
28 GB); instead the model is built with every parameter on the ``meta`` device (buffers such
as RoPE frequencies stay real), and a forward pre-hook on each module that owns parameters
loads them from a loader just before the module runs; the post-hook drops them again. Peak
memory is one module's weights plus activations.

transformers is imported lazily by the caller and passed in.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from mvc.errors import MvcError

Loader = Callable[[str], torch.Tensor]


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While building a module tree, move each parameter to ``meta`` as it is registered."""
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: Any) -> None:
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


class LazyModel:
    """``run(loader, batch)``: the base model's outputs with weights read from ``loader``."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        self.model = model.eval()
        self.dtype = dtype
        self.loader: Loader | None = None
        self.names: list[str] = []
        for module_name, module in model.named_modules():
            if any(p is not None for p in module._parameters.values()):
                prefix = f"{module_name}." if module_name else ""
                self.names += [prefix + n for n, p in module._parameters.items() if p is not None]
                module.register_forward_pre_hook(functools.partial(self._load, prefix))
                module.register_forward_hook(functools.partial(self._drop, dict(module._parameters)))

    def _load(self, prefix: str, module: torch.nn.Module, _args: Any) -> None:
        assert self.loader is not None
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            tensor = self.loader(prefix + name).to(self.dtype)
            if tuple(tensor.shape) != tuple(param.shape):
                raise MvcError(
                    f"cannot check equivalence: {prefix + name!r} has shape "
                    f"{list(tensor.shape)}, the model expects {list(param.shape)}"
                )
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)

    @staticmethod
    def _drop(meta: Mapping[str, Any], module: torch.nn.Module, _args: Any, _out: Any) -> None:
        module._parameters.update(meta)

    def run(self, loader: Loader, batch: Mapping[str, torch.Tensor]) -> Any:
        self.loader = loader
        try:
            with torch.no_grad():
                return self.model(**batch)
        finally:
            self.loader = None


@functools.lru_cache(maxsize=1)
def _cached(
    transformers: Any, config_json: str, kind: str, pooler: bool, dtype: torch.dtype
) -> LazyModel:
    config = json.loads(config_json)
    options = {k: v for k, v in config.items() if k != "model_type"}
    try:
        hf_config = transformers.AutoConfig.for_model(kind, **options)
    except (KeyError, ValueError) as err:
        raise MvcError(f"transformers cannot build a {kind!r} model from config.json: {err}") from None
    hf_config._attn_implementation = "eager"
    with _parameters_on_meta():
        if kind == "bert":
            model = transformers.BertModel(hf_config, add_pooling_layer=pooler)
        else:
            model = transformers.AutoModel.from_config(hf_config, attn_implementation="eager")
    return LazyModel(model.to(dtype), dtype)


def lazy_model(
    transformers: Any, config: Mapping, kind: str, pooler: bool, dtype: torch.dtype = torch.float32
) -> LazyModel:
    """The base model of ``config`` with meta parameters, computing in ``dtype`` (the last one
    is reused)."""
    config_json = json.dumps(dict(config), sort_keys=True, default=str)
    return _cached(transformers, config_json, kind, pooler, dtype)
