"""Parity with transformers' PyTorch BERT and RoBERTa, both ways (needs torch, CPU build)."""

import numpy as np
import pytest
import transformers

import model
from test_model import TINY, batch, perturbed, tiny

torch = pytest.importorskip("torch")

CLASSES = {"bert": transformers.BertForMaskedLM, "roberta": transformers.RobertaForMaskedLM,
           "xlm-roberta": transformers.XLMRobertaForMaskedLM}


def hf_model(model_type, cls=None, **extra):
    """A random transformers model with every parameter moved off its init."""
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    hf = (cls or CLASSES[model_type])(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


def hf_logits(hf, ids, mask, types):
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                 attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
                 token_type_ids=torch.tensor(np.asarray(types), dtype=torch.long))
    logits = out.logits if hasattr(out, "logits") else out.prediction_logits
    return logits.numpy()


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("model_type, hidden_act", [
    ("bert", "gelu"), ("roberta", "gelu_new"), ("xlm-roberta", "relu")])
def test_import_matches_transformers(tmp_path, model_type, hidden_act):
    hf = hf_model(model_type, hidden_act=hidden_act)
    hf.save_pretrained(tmp_path)
    module, params = model.from_pretrained(tmp_path)
    ids, mask, types = batch(hf.config.pad_token_id)
    expected = hf_logits(hf, ids, mask, types)
    assert max_diff(module.apply({"params": params}, ids, mask, types), expected) < 1e-5
    positions = np.array([[0, 5, 11], [2, 3, 7]], np.int32)
    gathered = module.apply({"params": params}, ids, mask, types, masked_positions=positions)
    assert max_diff(gathered, np.take_along_axis(expected, positions[..., None], 1)) < 1e-5


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_export_loads_in_transformers(tmp_path, model_type):
    module, params = model.from_config(tiny(model_type))
    params = perturbed(params)
    model.save_pretrained(tmp_path, module, params)
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path,
                                                                 output_loading_info=True)
    assert type(hf) is CLASSES[model_type]
    assert not any(info.values()), info
    ids, mask, types = batch(module.config.pad_token_id)
    ours = module.apply({"params": params}, ids, mask, types)
    assert max_diff(ours, hf_logits(hf.eval(), ids, mask, types)) < 1e-5


def test_bert_for_pretraining_layout(tmp_path, caplog):
    hf = hf_model("bert", transformers.BertForPreTraining)
    hf.save_pretrained(tmp_path)
    module, params = model.from_pretrained(tmp_path)
    assert "cls.seq_relationship.weight" in caplog.text and "newly" not in caplog.text
    ids, mask, types = batch()
    assert max_diff(module.apply({"params": params}, ids, mask, types),
                    hf_logits(hf, ids, mask, types)) < 1e-5


def test_bare_bert_model_keeps_encoder(tmp_path, caplog):
    hf = hf_model("bert", transformers.BertModel)
    hf.save_pretrained(tmp_path)
    _, params = model.from_pretrained(tmp_path)
    assert "newly initialised: cls.predictions.bias" in caplog.text
    np.testing.assert_array_equal(
        params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"],
        hf.encoder.layer[1].output.dense.weight.detach().numpy().T)


def test_sharded_and_pytorch_bin_checkpoints(tmp_path):
    hf = hf_model("bert")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids, mask, types = batch()
    expected = hf_logits(hf, ids, mask, types)
    for name in ("sharded", "bin"):
        module, params = model.from_pretrained(tmp_path / name)
        assert max_diff(module.apply({"params": params}, ids, mask, types), expected) < 1e-5
