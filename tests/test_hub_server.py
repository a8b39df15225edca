"""The local Hub (tests/hub_server.py) driven by the real, unmodified clients.

These tests pin down that huggingface_hub and transformers accept the
server's answers, so that publishing tests built on ``local_hub`` exercise
real client code paths and never reach huggingface.co.
"""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

REPO = "fintrl-test/tiny-mistral"


def tiny_mistral_config(hidden_size: int) -> dict:
    return {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
        "max_position_embeddings": 64,
    }


def write_model_folder(folder, hidden_size: int):
    """A README with YAML metadata, a safetensors file and a json config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- fintrl\n---\n# Tiny model\n")
    (folder / "config.json").write_text(json.dumps(tiny_mistral_config(hidden_size)))
    save_file({"w": torch.arange(hidden_size, dtype=torch.float32)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def published(local_hub, tmp_path):
    """A repo with one upload (hidden_size=8) tagged ``v1``."""
    api = HfApi()
    api.create_repo(REPO)
    info = api.upload_folder(folder_path=write_model_folder(tmp_path / "v1", 8), repo_id=REPO, commit_message="v1")
    api.create_tag(REPO, tag="v1")
    return api, info


def test_endpoint_is_loopback_and_fixture_points_clients_at_it(local_hub):
    from huggingface_hub import constants

    assert local_hub.endpoint.startswith("http://127.0.0.1:")
    assert HfApi().endpoint == constants.ENDPOINT == local_hub.endpoint
    assert local_hub.token.startswith("hf_test_")


def test_create_repo_then_exist_ok(local_hub):
    api = HfApi()
    url = api.create_repo(REPO)
    assert url == f"{local_hub.endpoint}/{REPO}" and url.repo_id == REPO
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True) == url


def test_upload_folder_is_a_single_commit(published, tmp_path):
    api, info = published
    commits = api.list_repo_commits(REPO)
    assert [c.title for c in commits] == ["v1", "initial commit"]
    assert commits[0].commit_id == info.oid
    files = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    weights = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "cache")
    assert load_file(weights)["w"].tolist() == list(range(8))


def test_unchanged_upload_makes_no_commit(published, tmp_path):
    api, info = published
    again = api.upload_folder(folder_path=write_model_folder(tmp_path / "same", 8), repo_id=REPO)
    assert again.oid == info.oid
    assert len(api.list_repo_commits(REPO)) == 2


def test_tags_and_branches(published):
    api, info = published
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, tag="v1")
    assert err.value.response.status_code == 409
    api.create_tag(REPO, tag="v1", exist_ok=True)
    api.create_branch(REPO, branch="dev")
    with pytest.raises(HfHubHTTPError):
        api.create_branch(REPO, branch="dev")
    refs = api.list_repo_refs(REPO)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", info.oid)]
    api.delete_tag(REPO, tag="v1")
    assert api.list_repo_refs(REPO).tags == []


def test_tag_pins_content_after_a_later_commit(published, tmp_path):
    api, info = published
    api.upload_folder(folder_path=write_model_folder(tmp_path / "v2", 16), repo_id=REPO, commit_message="v2")
    assert api.model_info(REPO, revision="v1").sha == info.oid
    assert api.model_info(REPO).sha != info.oid
    cache = tmp_path / "cache"
    at_tag = json.loads(Path(hf_hub_download(REPO, "config.json", revision="v1", cache_dir=cache)).read_text())
    at_main = json.loads(Path(hf_hub_download(REPO, "config.json", cache_dir=cache)).read_text())
    assert (at_tag["hidden_size"], at_main["hidden_size"]) == (8, 16)
    assert {f.path for f in api.list_repo_tree(REPO, revision="v1")} >= {"config.json", "README.md"}


def test_transformers_loads_config_at_tag(published, tmp_path, local_hub):
    """transformers asks model_info for the tag's sha, then downloads by sha."""
    from transformers import AutoConfig, MistralConfig

    api, info = published
    api.upload_folder(folder_path=write_model_folder(tmp_path / "v2", 16), repo_id=REPO, commit_message="v2")
    config = AutoConfig.from_pretrained(REPO, revision="v1", cache_dir=tmp_path / "fresh-cache")
    assert isinstance(config, MistralConfig) and config.hidden_size == 8
    assert ("GET", f"/{REPO}/resolve/{info.oid}/config.json") in local_hub.requests


def test_transformers_model_round_trip(local_hub, tmp_path):
    """save_pretrained -> upload_folder -> tag -> from_pretrained(revision=tag)."""
    from transformers import AutoModelForCausalLM, MistralConfig

    model = AutoModelForCausalLM.from_config(MistralConfig(**tiny_mistral_config(8)))
    model.save_pretrained(tmp_path / "model")
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(folder_path=tmp_path / "model", repo_id=REPO)
    api.create_tag(REPO, tag="v1.0.0")
    loaded = AutoModelForCausalLM.from_pretrained(REPO, revision="v1.0.0", cache_dir=tmp_path / "cache")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_peft_adapter_round_trip(local_hub, tmp_path):
    """peft downloads by tag name directly (``resolve/v1/...``), not by sha."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig

    def base_model():
        return AutoModelForCausalLM.from_config(MistralConfig(**tiny_mistral_config(8)))

    adapter = get_peft_model(base_model(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(folder_path=tmp_path / "adapter", repo_id=REPO)
    api.create_tag(REPO, tag="v1")
    loaded = PeftModel.from_pretrained(base_model(), REPO, revision="v1")
    lora = {name: t for name, t in adapter.state_dict().items() if "lora_" in name}
    assert lora and all(torch.equal(loaded.state_dict()[name], t) for name, t in lora.items())


def test_missing_repo_revision_and_file(published, tmp_path):
    api, _ = published
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("fintrl-test/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("fintrl-test/does-not-exist", "config.json", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", cache_dir=cache)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json", cache_dir=cache)


def test_private_repo_is_hidden_without_token(local_hub):
    HfApi().create_repo(REPO, private=True)
    assert HfApi().model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(REPO)


def test_server_only_ever_sees_the_fake_token(published, tmp_path, local_hub):
    hf_hub_download(REPO, "config.json", revision="v1", cache_dir=tmp_path / "cache")
    assert local_hub.seen_tokens and set(local_hub.seen_tokens) == {local_hub.token}


def test_wrong_token_is_refused_and_recorded(local_hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_the_right_one").create_repo(REPO)
    assert err.value.response.status_code == 401
    assert local_hub.seen_tokens == ["hf_not_the_right_one"]


# -- validate-yaml: the card's metadata goes through huggingface_hub's own parser, as on the real Hub ---------------
GOOD_CARD = "---\nlicense: apache-2.0\ntags:\n- fintrl\n---\n# Tiny model\n"
BAD_CARDS = {
    "yaml syntax": "---\ntags: [fintrl\nlicense: apache-2.0\n---\n# Tiny\n",
    "not a mapping": "---\n- just\n- a list\n---\n# Tiny\n",
    "model-index": "---\nmodel-index:\n- name: tiny\n  results:\n  - metrics: 3\n---\n# Tiny\n",
}


@pytest.mark.parametrize("problem", sorted(BAD_CARDS))
def test_validate_yaml_rejects_bad_metadata(local_hub, tmp_path, problem):
    from huggingface_hub.utils import get_session

    api = HfApi()
    api.create_repo(REPO)
    folder = write_model_folder(tmp_path / "model", 8)
    (folder / "README.md").write_text(BAD_CARDS[problem])
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md\.\n- \w+"):
        api.upload_folder(folder_path=folder, repo_id=REPO)
    assert [c.title for c in api.list_repo_commits(REPO)] == ["initial commit"]  # refused before any upload
    assert not any("/preupload/" in path for _, path in local_hub.requests)
    answer = get_session().post(
        f"{local_hub.endpoint}/api/validate-yaml", json={"content": BAD_CARDS[problem], "repoType": "model"}
    )
    assert answer.status_code == 400 and answer.json()["errors"][0]["message"]  # the real Hub's shape


def test_validate_yaml_accepts_good_metadata(local_hub):
    from huggingface_hub import DatasetCard, ModelCard

    ModelCard(GOOD_CARD).validate()
    ModelCard("# no metadata at all\n").validate()
    DatasetCard("---\nlicense: mit\n---\n# data\n").validate()
    assert sum(path == "/api/validate-yaml" for _, path in local_hub.requests) == 3


# -- fault injection -------------------------------------------------------------------------------------------------
def test_injected_errors_hit_the_next_matching_requests(published, local_hub):
    api, info = published
    fault = local_hub.inject(method="GET", path_contains=f"/api/models/{REPO}", fault="503", times=2)
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as err:
            api.model_info(REPO)
        assert err.value.response.status_code == 503
    api.list_repo_refs(REPO)  # counted once it is used up: not hit
    assert api.model_info(REPO).sha == info.oid and fault.hits == 2
    local_hub.inject(method="POST", path_contains="/tag/", fault=502)  # other methods and paths are not hit
    assert api.model_info(REPO).sha == info.oid
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, tag="v2")
    assert err.value.response.status_code == 502 and api.list_repo_refs(REPO).tags[0].name == "v1"


def test_dropped_connection_is_a_transport_error(published, local_hub):
    import httpx2

    api, info = published
    fault = local_hub.inject(path_contains="/refs", fault="drop")
    with pytest.raises(httpx2.TransportError, match="disconnected"):
        api.list_repo_refs(REPO)
    assert fault.hits == 1 and [t.name for t in api.list_repo_refs(REPO).tags] == ["v1"]
    assert [p for _, p in local_hub.requests].count(f"/api/models/{REPO}/refs") == 2  # both requests arrived


def test_fault_after_handling_loses_only_the_answer(published, local_hub):
    api, info = published
    local_hub.inject(method="POST", path_contains="/tag/", fault="500", after=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, tag="v2")
    assert err.value.response.status_code == 500
    assert {t.name for t in api.list_repo_refs(REPO).tags} == {"v1", "v2"}  # the tag was made all the same


def test_slow_answer_and_client_timeout(published, local_hub):
    import time

    import httpx2
    from huggingface_hub.utils import get_session

    api, info = published
    local_hub.inject(method="GET", path_contains=f"/api/models/{REPO}", fault="slow", delay=0.3)
    start = time.monotonic()
    assert api.model_info(REPO).sha == info.oid
    assert time.monotonic() - start >= 0.3
    local_hub.inject(method="GET", path_contains=f"/api/models/{REPO}", fault="slow", delay=1)
    with pytest.raises(httpx2.TimeoutException):
        get_session().get(f"{local_hub.endpoint}/api/models/{REPO}", timeout=0.2)
    assert api.model_info(REPO).sha == info.oid  # the server lives on


def test_faults_are_bounded(local_hub):
    from tests.hub_server import MAX_FAULT_DELAY

    for bad in (
        {"fault": "418"},
        {"fault": "slow", "delay": MAX_FAULT_DELAY + 1},
        {"fault": "slow"},
        {"times": 0},
        {"times": 10**6},
    ):
        with pytest.raises(ValueError):
            local_hub.inject(**bad)
    local_hub.inject(fault="500", times=3)
    local_hub.clear_faults()
    assert local_hub.faults == []
