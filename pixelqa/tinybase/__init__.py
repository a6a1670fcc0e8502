"""Pre-training of a tiny base for the embedded demo: a tiny Qwen2.5-VL that reads the synthetic frames and a micro
SAM 2.1 that segments what a point or a box marks, trained offline from random init.

UniPixel's stages start from pre-trained Qwen2.5-VL-Instruct and SAM 2.1 weights; the embedded demo starts from
random weights. This package builds the tiny counterpart of those weights (`vlm`: ViT pre-training on dense shape
labels, then general VQA; `sam`: promptable segmentation from points and boxes, and with `--what-share` from prompts
naming what the object is), so that a demo can start where UniPixel starts:

    python -m pixelqa.tinybase --out tinybase                       # about 25 minutes on 2 CPU cores
    python -m pixelqa.fit recipe=stage3 model.path=tinybase/qwen model.mask_decoder.checkpoint=tinybase/sam2.1_micro.pt

No base is shipped and the demo does not use one: measured from such a base the demo's figures did not improve beyond
run-to-run spread (docs/benchmarks.md, demo, third and fourth pass), because what caps them is which object a
`<|seg|>` selects: SAM's candidates hold the target, its IoU head does not rank it first.
"""

QWEN_DIR = "qwen"
SAM_FILE = "sam2.1_micro.pt"
CARD_FILE = "card.json"
