"""User errors of checkpoint loading and saving: one line, naming the file, tensor or field.

The folders are written by nlpkit's own `save_pretrained` (its parity with
`transformers` is tested in `test_save.py`), so these tests need no
`transformers` and run in a moment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from nlpkit import NlpkitError
from nlpkit.backbones import PRESETS, BackboneConfig, build_backbone, from_pretrained
from nlpkit.backbones.checkpoints import checkpoint_config, detect_family, load_checkpoint, save_pretrained

BERT = BackboneConfig(kind="encoder", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                      max_positions=40, type_vocab_size=2, norm_position="post", embedding_norm=True,
                      final_norm=False, norm_eps=1e-12)
LLAMA = BackboneConfig(kind="decoder", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=48, max_positions=64, position_embedding="rotary", norm="rmsnorm",
                       activation="silu", gated_mlp=True, attention_bias=False, attention_output_bias=False,
                       mlp_bias=False, tie_word_embeddings=False, dropout=0.0, attention_dropout=0.0)


def _folder(tmp_path: Path, config: BackboneConfig = BERT, family: str = "bert") -> Path:
    return save_pretrained(build_backbone(config), tmp_path / "ckpt", family=family)


def _error(path: Any, match: str) -> str:
    with pytest.raises(NlpkitError, match=match) as info:
        from_pretrained(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def test_hub_id_says_nlpkit_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = _error("sentence-transformers/all-MiniLM-L6-v2", "never downloads")
    assert "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2" in message


def test_missing_folder_file_instead_of_folder_and_no_config(tmp_path: Path) -> None:
    _error(tmp_path / "nowhere", "does not exist")
    (tmp_path / "weights.bin").write_bytes(b"")
    _error(tmp_path / "weights.bin", "is not a folder")
    (tmp_path / "empty").mkdir()
    _error(tmp_path / "empty", "no config.json in")


def test_no_weights(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors").unlink()
    assert checkpoint_config(folder).config == BERT  # the config alone needs no weights
    _error(folder, "no weights in .*model.safetensors, .*pytorch_model.bin")


# ---------------------------------------------------------------------------
# model_type and configs nlpkit cannot express
# ---------------------------------------------------------------------------


def test_unsupported_model_type_lists_the_supported_ones(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _edit_config(folder, model_type="xlnet")
    message = _error(folder, "unsupported model_type 'xlnet'")
    families = json.loads((Path(__file__).parents[1] / "unit" / "registry_contents.json").read_text())
    # umt5 is registered only to be refused with its reason: nlpkit does not load it, so it is not offered.
    loaded = sorted(set(families["checkpoint_families"]) - {"umt5"})
    assert f"supported: {', '.join(loaded)}" in message
    assert "config.json" in message


def test_model_type_from_architectures_of_old_configs() -> None:
    assert detect_family({"architectures": ["DistilBertForMaskedLM"]}) == "distilbert"
    assert detect_family({"architectures": ["BertModel"]}) == "bert"
    with pytest.raises(NlpkitError, match="no model_type"):
        detect_family({"architectures": ["Qwen2MoeForCausalLM"]})


@pytest.mark.parametrize(
    ("family", "changes", "field"),
    [
        ("llama", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 5e5, "factor": 8.0}},
         "rope_parameters.rope_type='proportional'"),
        ("llama", {"rope_parameters": None, "rope_scaling": {"type": "mrope", "factor": 2.0}},
         "rope_scaling.type='mrope'"),
        ("llama", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types='sliding_attention'"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ("marian", {"vocab_size": 100, "decoder_vocab_size": 50}, "decoder_vocab_size=50"),
        ("umt5", {}, "model_type='umt5'"),
        ("t5", {"feed_forward_proj": "gated-mish"}, "feed_forward_proj='mish'"),
    ],
)
def test_inexpressible_config_names_the_field(tmp_path: Path, family: str, changes: dict[str, Any],
                                              field: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": family, **changes}))
    message = _error(folder, "cannot be expressed")
    assert field in message


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def test_missing_weight_names_the_tensor(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["encoder.layer.1.output.dense.bias"]
    save_file(state, folder / "model.safetensors")
    _error(folder, r"missing weight encoder\.layer\.1\.output\.dense\.bias \(nlpkit layers\.1\.mlp\.down\.bias\)")


def test_misshapen_weight_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["encoder.layer.0.attention.self.query.weight"] = torch.zeros(32, 16)
    save_file(state, folder / "model.safetensors")
    _error(folder, r"encoder\.layer\.0\.attention\.self\.query\.weight .* has shape \(32, 16\), .* \(32, 32\)")


def test_truncated_and_corrupt_safetensors_name_the_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _error(folder, f"cannot read weights file {weights}")
    weights.write_bytes(b"\x00" * 64)
    _error(folder, f"cannot read weights file {weights}")


def test_truncated_bin_names_the_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    torch.save(state, weights)
    from_pretrained(folder)  # the intact .bin loads
    weights.write_bytes(weights.read_bytes()[:2000])
    _error(folder, f"cannot read weights file {weights}")


class _NotATensor:
    pass


def test_bin_loads_with_weights_only(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"payload": _NotATensor()}, folder / "pytorch_model.bin")
    _error(folder, "cannot read weights file .*pytorch_model.bin")


def test_missing_shard_names_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"embeddings.word_embeddings.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _error(folder, "shard model-00002-of-00002.safetensors named by .*index.json is missing")


def test_untied_head_missing_from_a_base_class_folder_starts_fresh(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(tmp_path, LLAMA, "llama")
    state = load_file(folder / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, folder / "model.safetensors")
    assert load_checkpoint(folder).fresh == ["lm_head.weight"]
    head = dict(from_pretrained(folder).named_parameters())["lm_head.weight"]
    assert "random initialisation" in caplog.text
    assert 0.01 < float(head.std()) < 0.03  # drawn as init_weights draws it (N(0, 0.02)), not left as allocated


def test_loading_a_folder_draws_no_random_numbers(tmp_path: Path) -> None:
    # Every weight comes from the folder, so none is drawn first: the user's seeded stream is untouched.
    folder = _folder(tmp_path, LLAMA, "llama")
    torch.manual_seed(0)
    loaded = from_pretrained(folder)
    after_loading = torch.rand(8)
    torch.manual_seed(0)
    assert torch.equal(after_loading, torch.rand(8))
    saved = load_file(folder / "model.safetensors")
    assert torch.equal(dict(loaded.named_parameters())["layers.0.attention.query.weight"],
                       saved["layers.0.self_attn.q_proj.weight"])
    assert float(torch.nn.init.normal_(torch.zeros(1000)).std()) > 0.5  # torch's init works again afterwards


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def test_save_refuses_what_the_family_cannot_express(tmp_path: Path) -> None:
    encoder = build_backbone(PRESETS["encoder-tiny"]())  # pre-norm: no BERT-style family has it
    with pytest.raises(NlpkitError, match="norm_position='pre' has no bert equivalent"):
        save_pretrained(encoder, tmp_path, family="bert")
    with pytest.raises(NlpkitError, match="no checkpoint family can express this encoder backbone; bert: "):
        save_pretrained(encoder, tmp_path)
    with pytest.raises(NlpkitError, match="unsupported model_type 'xlnet'"):
        save_pretrained(encoder, tmp_path, family="xlnet")


def test_save_infers_the_family(tmp_path: Path) -> None:
    save_pretrained(build_backbone(PRESETS["decoder-tiny"]()), tmp_path / "decoder")
    assert json.loads((tmp_path / "decoder" / "config.json").read_text())["model_type"] == "llama"
    save_pretrained(build_backbone(BERT), tmp_path / "encoder")
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["model_type"] == "bert"
