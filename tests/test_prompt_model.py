import pytest
import torch

from lpfl.config import LoraSettings, ModelSettings, PromptSettings
from lpfl.errors import ConfigError, ModelError
from lpfl.model.adapters import load_trainable_state, set_mode, trainable_state
from lpfl.model.loading import load_base_model
from lpfl.model.prompt import PromptModel

TEXTS = ["a gorgeous , funny film", "dull", "the plot is a mess and the acting is worse , sadly",
         "fine"]
MLM_PROMPT = PromptSettings(pattern="Review: {text} All in all, it was [MASK].",
                            label_words=("terrible", "great"))
MULTI_TOKEN = PromptSettings(label_words=(" terrible", " very good", " not good at all"))
"""Words of 1, 2 and 4 tokens for tiny-llama's word-level tokenizer."""


def make(source: str = "tiny-llama", prompt: PromptSettings | None = None,
         max_length: int = 48) -> PromptModel:
    base = load_base_model(ModelSettings(source=source))
    return PromptModel(base, prompt or PromptSettings(), max_length)


@pytest.mark.parametrize(("source", "prompt"), [("tiny-llama", None), ("tiny-bert", MLM_PROMPT)])
def test_batched_scores_equal_one_by_one(source: str, prompt: PromptSettings | None) -> None:
    """Padding (left for causal, right for MLM) must not change any text's class scores."""
    pm = make(source, prompt)
    batched = pm.score(TEXTS, batch_size=4)
    alone = torch.cat([pm.score([t]) for t in TEXTS])
    assert batched.shape == (4, 2)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_causal_scores_are_label_word_logits_at_last_position() -> None:
    pm = make()
    batch = pm.encode(TEXTS[:1])
    full = pm.network(input_ids=batch["input_ids"]).logits[0, -1]
    expected = full[[w for (w,) in pm.encoder.label_tokens]]
    torch.testing.assert_close(pm.score(TEXTS[:1])[0], expected, atol=1e-5, rtol=1e-5)


def summed_log_probs(pm: PromptModel, text: str) -> torch.Tensor:
    """The reference score: one full forward pass per token of every label word."""
    prompt = pm.tokenizer(pm.prompts([text])[0])["input_ids"]
    scores = torch.zeros(pm.num_classes)
    with torch.no_grad():
        for c, word in enumerate(pm.encoder.label_tokens):
            for k, token in enumerate(word):
                ids = torch.tensor([[*prompt, *word[:k]]])
                scores[c] += pm.network(input_ids=ids).logits[0, -1].log_softmax(-1)[token]
    return scores


def test_words_of_several_tokens_score_their_summed_log_probability() -> None:
    pm = make(prompt=MULTI_TOKEN)
    assert [len(w) for w in pm.encoder.label_tokens] == [1, 2, 4]
    expected = torch.stack([summed_log_probs(pm, t) for t in TEXTS])
    got = pm.score(TEXTS, batch_size=4)  # padded prompts of different lengths in one batch
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert bool((got < 0).all())  # log-probabilities, not logits


def test_single_token_words_keep_the_raw_last_position_logits_bit_for_bit() -> None:
    pm = make()
    batch = pm.encode(TEXTS)
    with torch.no_grad():
        out = pm.network(**batch, logits_to_keep=1, use_cache=False).logits[:, -1]
        ids = torch.tensor([w for (w,) in pm.encoder.label_tokens])
        assert torch.equal(pm.class_logits(batch), out.index_select(-1, ids))
    # Same softmax over the classes as the summed log-probabilities.
    expected = torch.stack([summed_log_probs(pm, t) for t in TEXTS]).softmax(-1)
    torch.testing.assert_close(pm.score(TEXTS).softmax(-1), expected, atol=1e-5, rtol=1e-5)


def test_several_token_scores_train_the_adapter() -> None:
    pm = make(prompt=MULTI_TOKEN)
    set_mode(pm, "lora", LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    load_trainable_state(pm, {k: torch.randn_like(v) * 0.1
                              for k, v in trainable_state(pm).items()})
    pm.class_logits(pm.encode(TEXTS))[:, 2].sum().backward()
    grads = [p.grad for p in pm.network.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_long_texts_are_cut_but_the_pattern_survives() -> None:
    pm = make(max_length=24)
    batch = pm.encode(["word " * 200])
    assert batch["input_ids"].shape[1] <= 24
    assert pm.tokenizer.decode(batch["input_ids"][0]).endswith("all in all , the movie was")


def test_bad_prompt_settings_are_model_errors() -> None:
    with pytest.raises(ModelError, match="not in this tokenizer"):
        make(prompt=PromptSettings(label_words=(" terrible", " zzqxj")))
    with pytest.raises(ModelError, match="same tokens"):
        make(prompt=PromptSettings(label_words=(" good", "good")))
    with pytest.raises(ModelError, match="masked LM scores one"):
        make("tiny-bert", PromptSettings(MLM_PROMPT.pattern, ("terrible", "very good")))
    with pytest.raises(ModelError, match=r"\[MASK\]"):
        make("tiny-bert", PromptSettings(label_words=("terrible", "great")))
    with pytest.raises(ModelError, match="max_length"):
        make(max_length=10)
    with pytest.raises(ModelError, match="neither"):
        load_base_model(ModelSettings(source="/no/such/model"))


def test_lora_state_holds_only_adapter_tensors_and_round_trips() -> None:
    pm = make()
    set_mode(pm, "lora", LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    state = trainable_state(pm)
    assert state and all("lora_A" in k or "lora_B" in k for k in state)
    assert {k.split(".")[-2] for k in state} == {"lora_A", "lora_B"}
    n_layers = 2
    assert len(state) == n_layers * 2 * 2
    trainable = {n for n, p in pm.network.named_parameters() if p.requires_grad}
    assert len(trainable) == len(state)
    before = pm.score(TEXTS)
    changed = {k: torch.randn_like(v) for k, v in state.items()}
    load_trainable_state(pm, changed)
    assert not torch.allclose(pm.score(TEXTS), before)
    load_trainable_state(pm, state)
    torch.testing.assert_close(pm.score(TEXTS), before)
    with pytest.raises(ModelError, match="missing"):
        load_trainable_state(pm, dict(list(state.items())[1:]))


def test_full_mode_exchanges_every_parameter_once() -> None:
    pm = make()
    set_mode(pm, "full", LoraSettings())
    state = trainable_state(pm)
    assert sum(t.numel() for t in state.values()) == sum(
        p.numel() for p in pm.network.parameters())


def test_unknown_lora_target_names_the_choices() -> None:
    pm = make()
    with pytest.raises(ConfigError, match="choose from"):
        set_mode(pm, "lora", LoraSettings(target_modules=("query",)))


def test_lm_loss_is_the_token_mean_next_token_loss_whatever_the_padding() -> None:
    pm = make()
    alone = []
    counts = []
    for text in TEXTS:
        batch = pm.encode([text])
        ids = batch["input_ids"]
        reference = pm.network(input_ids=ids, labels=ids).loss  # HF's own shifted LM loss
        torch.testing.assert_close(pm.lm_loss(batch), reference, atol=1e-5, rtol=1e-5)
        alone.append(reference)
        counts.append(ids.shape[1] - 1)
    padded = pm.encode(TEXTS)  # left-padded to the longest prompt
    assert int((padded["attention_mask"] == 0).sum()) > 0
    expected = sum(loss * n for loss, n in zip(alone, counts, strict=True)) / sum(counts)
    torch.testing.assert_close(pm.lm_loss(padded), expected, atol=1e-5, rtol=1e-5)


def test_lm_loss_needs_a_causal_lm() -> None:
    pm = make("tiny-bert", MLM_PROMPT)
    with pytest.raises(ModelError, match="causal"):
        pm.lm_loss(pm.encode(TEXTS))
