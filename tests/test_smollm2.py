"""The real base model: SmolLM2-135M-Instruct from the packaged Q4_1 GGUF (about a minute)."""

import numpy as np
import pytest
import torch

from lpfl.config import LoraSettings, ModelSettings, PromptSettings
from lpfl.model.adapters import load_trainable_state, set_mode, trainable_state
from lpfl.model.loading import load_base_model
from lpfl.model.prompt import PromptModel
from lpfl.tensors import decode_tensors, encode_tensors
from lpfl.training import batch_plan, hard_example, train_steps

pytestmark = pytest.mark.smollm2

POSITIVE = "A wonderful, moving film with superb performances."
NEGATIVE = "A dull, tedious mess that wastes its talented cast."


@pytest.fixture(scope="module")
def pm() -> PromptModel:
    torch.set_num_threads(1)
    base = load_base_model(ModelSettings(source="smollm2", max_length=64))
    model = PromptModel(base, PromptSettings(), 64)
    set_mode(model, "lora", LoraSettings(r=8, target_modules=("q_proj", "v_proj")))
    return model


def test_loads_the_quantized_base_and_wraps_it_with_lora(pm: PromptModel) -> None:
    assert type(pm.base.model).__name__ == "LlamaForCausalLM"
    assert pm.base.model_id == "smollm2-135m-instruct-q4_1"
    total = sum(p.numel() for p in pm.network.parameters())
    lora = sum(t.numel() for t in trainable_state(pm).values())
    assert lora == 460_800
    assert total - lora == 134_515_008


def test_label_words_and_scores_order_sentiment(pm: PromptModel) -> None:
    assert pm.encoder.label_tokens == tuple(
        (pm.tokenizer.convert_tokens_to_ids(t),) for t in ("Ġterrible", "Ġgreat"))
    scores = pm.score([POSITIVE, NEGATIVE])
    margin = scores[:, 1] - scores[:, 0]  # great minus terrible
    assert float(margin[0]) > float(margin[1]) + 1.0


def test_lora_steps_change_only_the_adapter_and_round_trip(pm: PromptModel) -> None:
    start = trainable_state(pm)
    frozen = {n: p.detach().clone() for n, p in pm.network.named_parameters()
              if not p.requires_grad and "layers.0." in n}
    examples = [hard_example(POSITIVE, 1, 2), hard_example(NEGATIVE, 0, 2)]
    rng = np.random.default_rng(0)
    first = train_steps(pm, examples, batch_plan(examples, 1, 2, 0.0, rng), 1e-3)
    later = train_steps(pm, examples, batch_plan(examples, 3, 2, 0.0, rng), 1e-3)
    assert later < first
    trained = trainable_state(pm)
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    for name, param in pm.network.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])
    scores = pm.score([POSITIVE, NEGATIVE])
    load_trainable_state(pm, start)
    load_trainable_state(pm, decode_tensors(encode_tensors(trained, "fp32")))
    torch.testing.assert_close(pm.score([POSITIVE, NEGATIVE]), scores)
