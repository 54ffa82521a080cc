"""CLIP patch relevance: which image patches CLIP finds close to a text. A cheaper map for when
no local copy of the VLM is available, and not attention: it says nothing about what the VLM
attended to, so it is named as a relevance map everywhere."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from img2music.tools.explain.attention import Grid
from img2music.tools.images import to_rgb
from img2music.tools.retrieval.embedder import Embedder


def clip_patch_relevance(embedder: Embedder, image: Image.Image, text: str) -> Grid:
    """Cosine similarity of the text's CLIP embedding with each patch's, min-max scaled to [0, 1].

    A fallback when no local VLM is available, and not attention: it shows which patches CLIP
    finds close to the text. The image is squashed to the model's square input instead of
    centre-cropped, so the grid covers the whole picture.
    """
    visual = embedder.clip.model.visual
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
        raise ValueError(f"{type(visual).__name__} is not a ViT with patch tokens")
    height, width = visual.image_size
    squashed = to_rgb(image).resize((width, height), Image.Resampling.BICUBIC)
    pixels = embedder.clip.preprocess(squashed).unsqueeze(0).to(embedder.device)
    with torch.inference_mode():
        # The last block's patch tokens after the final norm: what the class token is pooled from.
        features = visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, intermediates_only=True,
            output_fmt="NLC",
        )
        patches: torch.Tensor = features["image_intermediates"][-1][0]
        if visual.proj is not None:
            patches = patches @ visual.proj
        patches = F.normalize(patches.float(), dim=-1).cpu()
    text_vector = torch.from_numpy(embedder.embed_texts([text])[0])
    similarity = (patches @ text_vector).numpy().reshape(tuple(visual.grid_size))
    low, high = float(similarity.min()), float(similarity.max())
    scaled: Grid = ((similarity - low) / (high - low) if high > low
                    else np.zeros_like(similarity)).astype(np.float32)
    return scaled
