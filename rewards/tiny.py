"""Tiny random reward models of the real architectures, saved in the layouts the real loaders read.

Tests and benchmarks build these in code (seeded, no download) and load them through the very path
the published weights take: transformers `from_pretrained` for PickScore and DINOv2, an open_clip
`local-dir:` architecture plus an HPS-style `{"state_dict": ...}` checkpoint for HPS v2.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_pickscore(directory: str | Path, seed: int = 0) -> str:
    """A CLIPModel (ViT 32 px / patch 8, 2 layers per tower) and a CLIPProcessor -> `directory`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from plumbing.tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer(words=["sign", "says", "open", "closed", "photo", "cat"], model_max_length=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    text.update(
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision.update(image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    images = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return str(directory)


def tiny_hps(directory: str | Path, seed: int = 0) -> tuple[str, str]:
    """An open_clip ViT architecture (`local-dir:` config, no weights) and an HPS-style checkpoint file
    holding its random weights. Returns (model, checkpoint) as the `hps` reward takes them."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    preprocess = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "size": 32}
    config = {"model_cfg": model_config, "preprocess_cfg": preprocess}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**model_config)
    checkpoint = directory / "hps_checkpoint.pt"
    torch.save({"state_dict": clip.state_dict()}, checkpoint)
    return f"local-dir:{directory}", str(checkpoint)


def tiny_dino(directory: str | Path, seed: int = 0) -> str:
    """A Dinov2Model (32 px / patch 8, 2 layers, width 32) and its BitImageProcessor -> `directory`."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
    )
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(directory)
    BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(directory)
    return str(directory)


def tiny_owlv2(directory: str | Path, seed: int = 0) -> str:
    """An Owlv2ForObjectDetection (ViT 32 px / patch 8, 2 layers per tower) and its Owlv2Processor
    -> `directory`: the open-vocabulary detector geneval-detector loads, at toy size."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from plumbing.tokenizers import clip_tokenizer

    words = ["photo", "dog", "cat", "circle", "square", "triangle"]
    tokenizer = clip_tokenizer(words=words, model_max_length=16, leading=["<|pad|>", "<|unused|>"])
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    text.update(
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=2, eos_token_id=3, pad_token_id=3
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision.update(image_size=32, patch_size=8)
    config = Owlv2Config(
        text_config=text, vision_config=vision, projection_dim=32
    )  # = the text width, as OWL needs
    torch.manual_seed(seed)
    Owlv2ForObjectDetection(config).save_pretrained(directory)
    images = Owlv2ImageProcessor(size={"height": 32, "width": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    Owlv2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return str(directory)


VLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
VLM_SPECIAL += ["<|image_pad|>", "<|video_pad|>"]
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen25_vl(directory: str | Path, seed: int = 0) -> str:
    """A Qwen2_5_VLForConditionalGeneration (2 layers, width 32; a 2-block vision tower, patch 14) and its
    Qwen2_5_VLProcessor (Qwen2-VL image processor; a word-level tokenizer with Qwen's special tokens and
    a ChatML template) -> `directory`: the VLM judge's architecture at toy size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    words = ["yes", "no", "does", "this", "image", "show", "answer", "or", "user", "assistant", "score"]
    tokens = VLM_SPECIAL + words + [chr(c) for c in range(32, 127)] + ["\n"]
    backend = Tokenizer(
        models.WordLevel(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, unk_token="!")
    )
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=r"\w+|[^\w]", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": VLM_SPECIAL[1:]})
    images = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64)
    processor = Qwen2_5_VLProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=32 * 32, max_pixels=64 * 64),
        chat_template=VLM_CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    text.update(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    text.update(
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=0,
        eos_token_id=ids("<|im_end|>"),
    )
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32)
    vision.update(fullatt_block_indexes=[1], window_size=56)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        bos_token_id=0,
        eos_token_id=ids("<|im_end|>"),
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)
    return str(directory)


def tiny_video_reward(directory: str | Path, seed: int = 0, reward_tokens: bool = True) -> str:
    """A VideoAlign-style reward model at toy size -> `directory`: the tiny Qwen2.5-VL above, VideoAlign's
    reward tokens added to its tokenizer (`reward_tokens`), and a random `rm_head` [3, 32] saved beside
    the backbone as VideoAlign saves it (rewards/video_reward.py)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewards.video_reward import DIMENSIONS, REWARD_TOKENS

    tiny_qwen25_vl(directory, seed)
    if reward_tokens:
        processor = AutoProcessor.from_pretrained(directory)
        processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
        model = AutoModelForImageTextToText.from_pretrained(directory)
        model.resize_token_embeddings(len(processor.tokenizer))
        processor.save_pretrained(directory)
        model.save_pretrained(directory)
    generator = torch.Generator().manual_seed(seed + 1)
    head = {"rm_head.weight": torch.randn(len(DIMENSIONS), 32, generator=generator), "rm_head.bias": torch.zeros(3)}
    save_file(head, str(Path(directory) / "reward_head.safetensors"))
    return str(directory)
