"""Building a pre-trained tiny base: both halves (in one process or two) and the atomic write of the folder."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pixelqa.data.shards import sha256_file
from pixelqa.tinybase import CARD_FILE, QWEN_DIR, SAM_FILE
from pixelqa.tinybase.sam import SamSettings, pretrain_sam
from pixelqa.tinybase.vlm import BASE_SIZES, VisionSettings, VlmSettings, pretrain_vision, pretrain_vlm


def sam_half(sam: SamSettings, target: Path, threads: int) -> dict:
    """Train the micro SAM and write it to `target` (float16); returns its figures."""
    from pixelqa.model.mask_decoder import MaskDecoder

    torch.set_num_threads(threads)
    t0 = time.time()
    with torch.random.fork_rng():
        torch.manual_seed(sam.seed + 1)
        decoder = MaskDecoder("micro", 128, train_image_encoder=True, prompt_padding="none")
    iou = pretrain_sam(decoder, sam)
    state = {k: v.half() if v.is_floating_point() else v for k, v in decoder.sam.state_dict().items()}
    torch.save({"model": state}, target)
    return {"settings": asdict(sam), "held_out_mean_iou": iou, "seconds": round(time.time() - t0, 1)}


def _sam_child(sam: SamSettings, target: str, threads: int, report: str) -> None:
    """Entry of the second process: the SAM half, its figures written to `report`."""
    Path(report).write_text(json.dumps(sam_half(sam, Path(target), threads)))


def vlm_half(vit: VisionSettings, vlm: VlmSettings, target: Path, threads: int) -> dict:
    """Pre-train the tiny Qwen2.5-VL (ViT, then VQA) and save it as a base folder at `target`; returns its figures."""
    from pixelqa.data.collate import Collator
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.unipixel import UniPixel

    torch.set_num_threads(threads)
    t0 = time.time()
    model = UniPixel(UniPixelConfig(seed=vlm.seed, tiny=BASE_SIZES))  # the tiny preset, random init, no LoRA
    collator = Collator(model.processor, num_frames=vlm.num_frames, max_tokens=1024)
    vit_acc = pretrain_vision(model, vit)
    vlm_acc = pretrain_vlm(model, collator, vlm)
    model.qwen.save_pretrained(target)
    model.processor.save_pretrained(target)
    # the image and video processors' own files, which a Qwen2.5-VL folder carries (release.build_processor)
    model.processor.image_processor.save_pretrained(target)
    model.processor.video_processor.save_pretrained(target)
    return {
        "sizes": asdict(BASE_SIZES),
        "vit": {"settings": asdict(vit), "held_out_balanced_token_label_accuracy": vit_acc},
        "vlm": {"settings": asdict(vlm), "held_out_answer_accuracy": vlm_acc},
        "seconds": round(time.time() - t0, 1),
    }


def build(out: Path, vit: VisionSettings, vlm: VlmSettings, sam: SamSettings, jobs: int = 1) -> dict:
    """Train both halves and write the base folder atomically; returns its card."""
    from pixelqa.files import atomic_folder

    with atomic_folder(out) as tmp:
        if jobs > 1:
            report = tmp / "sam_report.json"
            child = multiprocessing.get_context("spawn").Process(
                target=_sam_child, args=(sam, str(tmp / SAM_FILE), 1, str(report))
            )
            child.start()
            try:
                qwen = vlm_half(vit, vlm, tmp / QWEN_DIR, 1)
            except BaseException:
                child.terminate()  # the VLM half failed: stop the SAM half before its folder is removed
                child.join()
                raise
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"the SAM half failed (exit code {child.exitcode}); see its output above")
            sam_card = json.loads(report.read_text())
            report.unlink()
        else:
            qwen = vlm_half(vit, vlm, tmp / QWEN_DIR, 1)
            sam_card = sam_half(sam, tmp / SAM_FILE, 1)
        card = {
            "what": "pre-trained tiny base (python -m pixelqa.tinybase)",
            "qwen": qwen,
            "sam": sam_card,
            "files": {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
