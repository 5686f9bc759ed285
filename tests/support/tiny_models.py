"""Builders of tiny random-weight models (with their tokenizers/processors) written into a
folder, so tests, demos and benchmarks load them through the same
`from_pretrained(path)` code that users hit with real checkpoint ids (datasette's
fixtures idea: one builder in the package, shared by everyone).

- `build_tiny_clip(dir)`             CLIPModel + CLIPProcessor
- `build_tiny_siglip(dir)`           SiglipModel + SiglipProcessor
- `build_tiny_qwen2_5_vl(dir)`       Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (chat template)
- `build_tiny_text_classifier(dir)`  BERT-like AutoModelForSequenceClassification (rubert-tiny-toxicity labels)
- `tiny_model_dir(kind)`             the same, built once per process into a temp folder

Exact-architecture configs for benchmarks (random weights, real compute):
`clip_vit_l14_config()`, `qwen2_5_vl_3b_config()`, and in-memory builders
`random_clip_vit_l14()` / `random_qwen2_5_vl_3b()` that never write the multi-GB weights.

Tokenizers are trained offline with the `tokenizers` library on a small Russian+English
corpus, so no hub access is needed. Weights are random: outputs are meaningless but
shapes, dtypes, chat templates and generation behave exactly like the real models.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

# Words the tiny tokenizers should know as whole tokens (class prompts, parser words, JSON).
_CORPUS = [
    "токсичный мем", "нейтральный мем", "нетоксичный мем", "оскорбительный мем", "безобидный мем",
    "мем с текстом: «когда наконец пятница»", "картинка с надписью", "это токсичный мем",
    "это нейтральный мем", "a photo of a toxic meme", "a photo of a neutral meme", "an offensive meme",
    "a harmless meme", "a meme with the text", "toxic", "non_toxic", "non-toxic", "neutral", "unknown",
    '{"label": "toxic", "explanation": "оскорбление"}', '{"label": "non_toxic", "explanation": "шутка"}',
    "Ответ: токсичный. Объяснение: мем оскорбляет людей.", "Ответ: нейтральный. Мем безобидный.",
    "Ты модератор контента. Определи, является ли мем токсичным или нейтральным.",
    "You are a helpful assistant.", "Classify the meme as toxic or non_toxic and explain briefly.",
    "не токсичный", "класс", "объяснение", "label", "explanation", "system", "user", "assistant",
    "когда код заработал сам", "кот опять спит на клавиатуре", "ненавижу всех вокруг",
    "0123456789 .,:;!?-()[]{}\"'«»/\\@#$%^&*_+=<>|~`",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "обидные слова угрозы оскорбления мат насилие дискриминация",
    "insult obscenity threat dangerous",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template of Qwen2-VL / Qwen2.5-VL Instruct checkpoints.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOXICITY_LABELS = ("non-toxic", "insult", "obscenity", "threat", "dangerous")


def _corpus() -> list[str]:
    try:
        from workbench.store.demo_memes import NEUTRAL_CAPTIONS, TOXIC_CAPTIONS

        extra = list(NEUTRAL_CAPTIONS) + list(TOXIC_CAPTIONS)
    except ImportError:  # samples is optional for the builders
        extra = []
    return (_CORPUS + extra) * 4


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _vocab_and_merges(tokenizer: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges (pairs) of a trained tokenizers-backed BPE tokenizer."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


# ---------------------------------------------------------------------------- big random models


def fast_random_model(model_class: Any, config: Any, dtype: Any, seed: int = 0) -> Any:
    """`model_class(config)` in `dtype`, eval mode, with cheap random weights: the standard
    init of billions of parameters takes minutes on a CPU, while the compute of a forward
    pass does not depend on the values. Matrices get a tiled N(0, 0.02) block, norm weights
    1, biases 0, so activations stay finite and realistic in scale."""
    import torch
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate directly in the target dtype: half the peak memory in bf16
    try:
        with no_init_weights():
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator().manual_seed(seed)
    block = (torch.randn(1_000_003, generator=generator) * 0.02).to(dtype)  # prime length: no row alignment
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 0:
                continue  # scalars (CLIP's logit_scale) are set by __init__
            if param.dim() == 1 and name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1 and name.endswith("weight"):
                param.fill_(1.0)  # norm scales
            else:
                flat = param.view(-1)
                for start in range(0, flat.numel(), block.numel()):
                    chunk = flat[start : start + block.numel()]
                    chunk.copy_(block[: chunk.numel()])
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------- CLIP


def tiny_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A CLIP BPE tokenizer trained on the Russian+English corpus, covering every byte."""
    from transformers import CLIPTokenizer

    trained = CLIPTokenizer().train_new_from_iterator(
        _corpus(), vocab_size=700, initial_alphabet=_byte_alphabet())
    vocab, merges = _vocab_and_merges(trained)
    # Every byte also as a word end ("x</w>"), like the real CLIP vocab: no <unk> for rare chars.
    for ch in _byte_alphabet():
        for piece in (ch, ch + "</w>"):
            if piece not in vocab:
                vocab[piece] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_clip_config(tokenizer: Any, image_size: int = 32, max_positions: int = 77) -> Any:
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=max_positions, projection_dim=16,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8, projection_dim=16)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def _clip_processor(tokenizer: Any, image_size: int) -> Any:
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_clip(directory: Path | str, max_positions: int = 77, seed: int = 0) -> Path:
    """Write a tiny random CLIPModel + CLIPProcessor into `directory`; return it.

    `max_positions` is the text context (77 like real CLIP); a smaller one makes
    truncation easy to test."""
    import torch
    from transformers import CLIPModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(model_max_length=max_positions)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(tokenizer, image_size=32, max_positions=max_positions)).eval()
    model.save_pretrained(directory)
    _clip_processor(tokenizer, 32).save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: Path | str, seed: int = 0) -> Path:
    """Write a tiny random SiglipModel + SiglipProcessor (64-token text context, max-length
    padding like real SigLIP) into `directory`; return it."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(model_max_length=64)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval().save_pretrained(directory)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def clip_vit_l14_config(vocab_size: int = 49408) -> Any:
    """The exact openai/clip-vit-large-patch14 architecture (for benchmarks)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=768)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)


def random_clip_vit_l14(dtype: Any = None, seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): ViT-L/14 CLIP with random weights in memory (same compute as the
    real one; the tokenizer is the tiny one, padded to the real 77-token context)."""
    import torch
    from transformers import CLIPModel

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    config = clip_vit_l14_config()
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = fast_random_model(CLIPModel, config, dtype or torch.float32, seed)
    return model, _clip_processor(tokenizer, 224)


def build_clip_vit_l14(directory: Path | str, dtype: Any = None, seed: int = 0) -> Path:
    """Write the random ViT-L/14 CLIP into `directory` (~0.9 GB in bf16, ~1.7 GB in fp32)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, processor = random_clip_vit_l14(dtype=dtype or torch.bfloat16, seed=seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------- Qwen2.5-VL


def tiny_qwen_tokenizer() -> Any:
    """A Qwen2-style byte-level BPE tokenizer with Qwen's special tokens and chat template."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    trained = Qwen2Tokenizer().train_new_from_iterator(
        _corpus(), vocab_size=800, initial_alphabet=_byte_alphabet())
    vocab, merges = _vocab_and_merges(trained)
    vocab = {k: v for k, v in vocab.items() if k not in QWEN_SPECIAL_TOKENS}
    vocab = {k: i for i, k in enumerate(sorted(vocab, key=vocab.__getitem__))}
    for token in QWEN_SPECIAL_TOKENS:  # after the regular vocab, like the real Qwen ids
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768,
                               extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                     "vision_bos_token": "<|vision_start|>",
                                                     "vision_eos_token": "<|vision_end|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.eos_token = "<|im_end|>"  # the Instruct checkpoints stop on <|im_end|>
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def _qwen_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any], tie: bool) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(text, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=tie)
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=tie,
    )


def tiny_qwen2_5_vl_config(tokenizer: Any) -> Any:
    """Tiny but structurally faithful: patch 14, merge 2, temporal patch 2, windowed
    attention with one full-attention block, M-RoPE sections summing to head_dim/2."""
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                                     "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                  out_hidden_size=64, fullatt_block_indexes=[1])
    return _qwen_config(tokenizer, text, vision, tie=True)


def qwen2_5_vl_3b_config(vocab_size: int = 151936, tokenizer: Any = None) -> Any:
    """The exact Qwen/Qwen2.5-VL-3B-Instruct architecture (for benchmarks). With a
    `tokenizer`, special-token ids follow it (vocab stays `vocab_size` for the real compute)."""
    text = dict(vocab_size=vocab_size, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                                     "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                  out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31])
    return _qwen_config(tokenizer or tiny_qwen_tokenizer(), text, vision, tie=True)


def _qwen_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=QWEN2_VL_CHAT_TEMPLATE)


def _generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), do_sample=False,
    )


def build_tiny_qwen2_5_vl(directory: Path | str, seed: int = 0, min_pixels: int = 56 * 56,
                          max_pixels: int = 112 * 112) -> Path:
    """Write a tiny random Qwen2.5-VL (model, processor with chat template, generation
    config) into `directory`; loads with AutoModelForImageTextToText / AutoProcessor.

    The default pixel budget (≤ 112×112 → ≤ 16 image tokens) keeps tests fast."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(tokenizer)).eval()
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(directory)
    _qwen_processor(tokenizer, min_pixels, max_pixels).save_pretrained(directory)
    return directory


def random_qwen2_5_vl_3b(dtype: Any = None, seed: int = 0, min_pixels: int = 56 * 56,
                         max_pixels: int = 448 * 448) -> tuple[Any, Any]:
    """(model, processor): the Qwen2.5-VL-3B architecture with random weights in memory
    (~3.8 B params: ~7.5 GB in bf16). Never written to disk."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_qwen_tokenizer()
    config = qwen2_5_vl_3b_config(tokenizer=tokenizer)
    model = fast_random_model(Qwen2_5_VLForConditionalGeneration, config, dtype or torch.bfloat16, seed)
    model.generation_config = _generation_config(tokenizer)
    return model, _qwen_processor(tokenizer, min_pixels, max_pixels)


# ---------------------------------------------------------------------------- text classifier


def tiny_wordpiece_tokenizer() -> Any:
    from transformers import BertTokenizer

    trained = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}).train_new_from_iterator(
        _corpus(), vocab_size=600)
    return BertTokenizer(vocab=trained.get_vocab(), model_max_length=512)


def build_tiny_text_classifier(directory: Path | str, labels: tuple[str, ...] = TOXICITY_LABELS, seed: int = 0) -> Path:
    """Write a tiny random BERT AutoModelForSequenceClassification with
    cointegrated/rubert-tiny-toxicity's labels (multi-label, sigmoid) + tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification",
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------- per-process cache

BUILDERS = {
    "clip": build_tiny_clip,
    "siglip": build_tiny_siglip,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "text_classifier": build_tiny_text_classifier,
}
_built: dict[str, Path] = {}
_lock = threading.Lock()
_root: Path | None = None


def tiny_model_dir(kind: str) -> Path:
    """Folder of the tiny `kind` model (a key of BUILDERS: 'clip', 'siglip', 'qwen2_5_vl',
    'text_classifier'), built once
    per process into a temp folder that is removed at exit. Treat it as read-only."""
    global _root
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny model '{kind}'; choose one of: {', '.join(BUILDERS)}")
    with _lock:
        if kind not in _built:
            if _root is None:
                _root = Path(tempfile.mkdtemp(prefix="workbench-tiny-models-"))
                atexit.register(shutil.rmtree, _root, True)
            _built[kind] = BUILDERS[kind](_root / kind)
        return _built[kind]
