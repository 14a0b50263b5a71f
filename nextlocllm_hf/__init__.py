"""nextlocllm-hf: NextLocLLM next-location prediction as a Hugging Face-native model.

Importing the package registers `NextLocLLMConfig` / `NextLocLLMForCoordinateRegression` with `AutoConfig` and
`AutoModel`, and marks them for auto classes so that `save_pretrained` ships the flat modeling code and `auto_map`
(loading then also works with `trust_remote_code=True` where this package is not installed). It also registers the
`next-location` pipeline task, so `pipeline("next-location", model=model)` takes a model object too, and makes
`model.push_to_hub` push the package's validated model card (with the run's metrics) like `nextlocllm_hf.hub`.
"""

from transformers import AutoConfig, AutoModel

from .modeling.backbone_nextlocllm import EMBEDDED_BACKBONES, resolve_backbone
from .modeling.configuration_nextlocllm import NextLocLLMConfig
from .modeling.modeling_nextlocllm import MODEL_INPUT_NAMES, NextLocLLMForCoordinateRegression, NextLocLLMOutput
from .modeling.pipeline_nextlocllm import NextLocationPipeline
from .modeling.retrieval_nextlocllm import CityRetriever

AutoConfig.register(NextLocLLMConfig.model_type, NextLocLLMConfig, exist_ok=True)
AutoModel.register(NextLocLLMConfig, NextLocLLMForCoordinateRegression, exist_ok=True)
NextLocLLMConfig.register_for_auto_class()
NextLocLLMForCoordinateRegression.register_for_auto_class("AutoModel")


def _push_to_hub_with_card(model, repo_id: str, **kwargs):
    """`model.push_to_hub`: `hub.push_to_hub_with_card`, where every push lives. Imported on the first push, not with
    the package: `python -m nextlocllm_hf.hub` must find the module not yet imported (runpy warns otherwise)."""
    from .hub import push_to_hub_with_card

    return push_to_hub_with_card(model, repo_id, **kwargs)


NextLocLLMForCoordinateRegression.hub_pusher = staticmethod(_push_to_hub_with_card)

__version__ = "0.1.0"

__all__ = [
    "NextLocLLMConfig",
    "NextLocLLMForCoordinateRegression",
    "NextLocLLMOutput",
    "CityRetriever",
    "NextLocationPipeline",
    "MODEL_INPUT_NAMES",
    "EMBEDDED_BACKBONES",
    "resolve_backbone",
]
