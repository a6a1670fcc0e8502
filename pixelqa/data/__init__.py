"""Everything before the batch: sample schema, masks, converters, shards, mixing, loading and collate.

schema (Sample and its parts) . masks (COCO RLE) . registry (@register_source, dataset cards) .
sources/ (one converter per source) . synthetic (the embedded demo source) . shards (building) .
loader (reading: make_dataset) . mixture (repeat factors) . prompts (prompt sampling, templates) .
collate (Collator -> pixelqa.batch.Batch) . packing (worker batches in one shared buffer) . shard_reader (checked
reads) . budgets (pixel budgets) . inspect_shards (inspect / stats) . __main__ (the CLI).
This package imports no model or training code.
"""

from pixelqa.data.schema import SCHEMA_VERSION, TASKS, Media, ObjectTrack, Prompt, Sample, SampleError, Turn

__all__ = ["SCHEMA_VERSION", "TASKS", "Media", "ObjectTrack", "Prompt", "Sample", "SampleError", "Turn"]
