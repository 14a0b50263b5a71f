"""save_pretrained -> AutoModel (no flag) and -> trust_remote_code in a process without nextlocllm_hf."""

import json
import os
import sys
import textwrap

import pytest
import torch
from conftest import build_model, make_batch, make_retriever
from processes import run
from transformers import AutoConfig, AutoModel

from nextlocllm_hf import NextLocLLMConfig, NextLocLLMForCoordinateRegression

CITIES = {"nyc": {"seed": 1}, "calgary": {"seed": 2, "centre": (-12_710_000.0, 6_610_000.0)}}

REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["nextlocllm_hf"] = None  # the package is unimportable here: only the Hub-style remote code can load
    import torch
    from transformers import AutoModel

    folder, batch_file, output_file = sys.argv[1:4]
    try:
        AutoModel.from_pretrained(folder)
        raise SystemExit("loaded without trust_remote_code: the package leaked into this process")
    except ValueError:
        pass
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    batches = torch.load(batch_file)
    outputs = {}
    for city, batch in batches.items():
        out = model(**batch, city=city, top_k=5)
        outputs[city] = (out.coordinates, out.top_k_cells, out.top_k_distances)
    torch.save({"outputs": outputs, "cities": model.cities, "module": type(model).__module__}, output_file)
    """
)


@pytest.fixture
def saved_model(tiny_backbone, tmp_path):
    model = build_model(tiny_backbone)
    for name, settings in CITIES.items():
        model.add_city(make_retriever(name, num_cells=40, **settings))
    batches = {name: make_batch(model.config, model.retriever(name), batch_size=4, seed=7) for name in CITIES}
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return model, batches, folder


def outputs_of(model, batches):
    with torch.no_grad():
        return {city: model(**batch, city=city, top_k=5) for city, batch in batches.items()}


def test_save_writes_weights_code_auto_map_and_retrievers(saved_model):
    _, _, folder = saved_model
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "retrievers.json", "retrievers.safetensors"} <= files
    assert {"modeling_nextlocllm.py", "configuration_nextlocllm.py", "retrieval_nextlocllm.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "nextlocllm"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_nextlocllm.NextLocLLMConfig",
        "AutoModel": "modeling_nextlocllm.NextLocLLMForCoordinateRegression",
    }
    assert not any(name.endswith((".pkl", ".pickle", ".bin")) for name in files)


def test_automodel_loads_without_flag_and_matches(saved_model):
    model, batches, folder = saved_model
    assert isinstance(AutoConfig.from_pretrained(folder), NextLocLLMConfig)
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is NextLocLLMForCoordinateRegression
    assert loaded.cities == list(CITIES)
    before, after = outputs_of(model, batches), outputs_of(loaded, batches)
    for city in CITIES:
        # Weights are bit-identical; matmuls over memory-mapped vs freshly allocated tensors may round differently
        # in the last float32 bit, so positions agree to a millimetre and the ranked cells exactly.
        torch.testing.assert_close(after[city].coordinates, before[city].coordinates, rtol=0, atol=1e-3)
        assert torch.equal(after[city].top_k_cells, before[city].top_k_cells)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_remote_code_loads_where_package_is_unimportable(saved_model, tmp_path):
    _, batches, folder = saved_model
    batch_file, output_file = tmp_path / "batches.pt", tmp_path / "outputs.pt"
    torch.save(batches, batch_file)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = run([sys.executable, str(script), str(folder), str(batch_file), str(output_file)], env=env,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(output_file)
    assert remote["module"].startswith("transformers_modules.")
    assert remote["cities"] == list(CITIES)
    reference = outputs_of(AutoModel.from_pretrained(folder), batches)
    for city in CITIES:
        coordinates, cells, distances = remote["outputs"][city]
        assert torch.equal(coordinates, reference[city].coordinates)
        assert torch.equal(cells, reference[city].top_k_cells)
        assert torch.equal(distances, reference[city].top_k_distances)


def test_model_without_cities_round_trips(tiny_backbone, tmp_path):
    model = build_model(tiny_backbone)
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).cities == []


def test_truncated_retriever_file_fails_loudly(saved_model):
    _, _, folder = saved_model
    weights = folder / "retrievers.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match="retrievers.safetensors: cannot read retriever arrays"):
        AutoModel.from_pretrained(folder)
