"""Everything before the batch: sample schema, masks, converters, shards, mixing, loading and collate.

This package imports no model or training code.
"""

from pixelqa.data.schema import SCHEMA_VERSION, TASKS, Media, ObjectTrack, Prompt, Sample, SampleError, Turn

__all__ = ["SCHEMA_VERSION", "TASKS", "Media", "ObjectTrack", "Prompt", "Sample", "SampleError", "Turn"]
