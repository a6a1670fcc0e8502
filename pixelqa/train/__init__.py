"""Lightning glue: stage modules (`module`), the shard data module (`datamodule`), callbacks and the lr schedule.

    from pixelqa.train.module import Stage1Module, Stage2Module, Stage3Module, module_class
    from pixelqa.train.datamodule import ShardDataModule
    from pixelqa.train.schedule import build_scheduler, warmup_cosine

Entry points live in `pixelqa.fit` (training) and `pixelqa.evaluate` (benchmarks).
"""
