"""A tiny random-weight Qwen2-VL and its processor, built from configs with no download.

The local backend and the attention map need a real transformers vision-language model, and
tests have no network. Qwen2-VL is small to build (about 110 k parameters here) and has the
machinery that matters: image placeholder tokens, merged patches, M-RoPE and eager attention.

The tokenizer is byte-level BPE with no merges: one token per byte, so any text (ABC, accents)
tokenizes and decodes back unchanged, and its offset mapping is exact. On top of the 256 bytes
it has Qwen2-VL's special tokens and a minimal version of Qwen2-VL's chat template.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2-VL's template, reduced to what the tests use: string or list content, images inline.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH_SIZE = 14
MERGE_SIZE = 2
# Small images keep the tests fast: at most 8 × 8 patches, that is 16 image tokens.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def tiny_tokenizer() -> Any:
    """Byte-level BPE without merges plus Qwen2-VL's special tokens and chat template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    fast: Any = PreTrainedTokenizerFast  # transformers' constructors are untyped
    return fast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_processor() -> Any:
    """Qwen2-VL's processor around the tiny tokenizer, with a small pixel budget."""
    processor: Any = Qwen2VLProcessor
    return processor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE,
            merge_size=MERGE_SIZE,
        ),
        tokenizer=tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_model(processor: Any, *, eager: bool = True, seed: int = 0) -> Any:
    """A random Qwen2-VL (2 text layers of 4 heads, 2 vision blocks) sized to the tokenizer."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # M-RoPE splits the 8 rotary frequencies of a 8-dim head into time, height, width.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [2, 1, 1]},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": PATCH_SIZE, "spatial_merge_size": MERGE_SIZE, "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    if eager:
        model.set_attn_implementation("eager")
    return model.eval()


def build_tiny_vlm(*, eager: bool = True, seed: int = 0) -> tuple[Any, Any]:
    """Model and processor together, as `LocalVLM` takes them."""
    processor = tiny_processor()
    return tiny_model(processor, eager=eager, seed=seed), processor
