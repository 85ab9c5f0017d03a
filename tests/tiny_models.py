"""Tiny, randomly initialised HF models saved locally, so tests exercise the real loading code offline."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "the a you are is was i am we they he she it not very so good bad nice kind great stupid idiot "
    "awful hello thanks please what why how yes no day night love hate friend people and but "
    "really think this that of to in on for with my your me"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}: {% endif %}"


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS + [":", ".", ",", "!", "?"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_causal_lm(path: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def tiny_seq2seq_lm(path: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def tiny_classifier(path: str | Path, id2label: dict[int, str] | None = None, seed: int = 0) -> Path:
    """A RoBERTa sequence classifier; default labels mirror the seed's dynabench model (0 = nothate)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    tok = make_tokenizer()
    id2label = id2label or {0: "nothate", 1: "hate"}
    cfg = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=130, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    RobertaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def tiny_run_config(model_path, **train):
    """A CPU run config for a tiny model: 8-token responses, batches of 16 in minibatches of 4, `train` overrides."""
    from rlaif_tasks.config import GenerationConfig, RunConfig, TrainConfig

    config = RunConfig(name="tiny", seed=0, device="cpu")
    config.model.policy = str(model_path)
    config.generation = GenerationConfig(max_new_tokens=8, min_new_tokens=8, batch_size=16)
    config.train = TrainConfig(**{"steps": 2, "batch_size": 16, "mini_batch_size": 4, **train})
    return config
