"""Inference on users' media: `python -m pixelqa.predict` and `Predictor(model).run(media, text, prompts, history)`.

media.py      read an image, a video file (PyAV) or a folder of frames
frames.py     which frames SAM and the LLM see (rules from pixelqa.frame_sampling, the official evaluation's)
prompts.py    --point / --box / --mask parsing and checks, `[k] <|ref|>` placement
predictor.py  Predictor / Prediction: one user turn on UniPixel.chat, memory checks, timings
outputs.py    answer, COCO RLE JSON, DAVIS palette PNGs, overlays (PNG / GIF / MP4), run.json
loading.py    safe model loading (released / save_pretrained folder, Lightning checkpoint), device, dtype
__main__.py   the CLI (one turn, or --chat)
"""

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.loading import load_model
from pixelqa.predict.media import Media, media_from_tensor, probe_media, read_media
from pixelqa.predict.predictor import Prediction, Predictor

__all__ = [
    "Media",
    "PredictInputError",
    "Prediction",
    "Predictor",
    "load_model",
    "media_from_tensor",
    "probe_media",
    "read_media",
]
