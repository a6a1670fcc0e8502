"""Running grid cells and shard builds as jobs (submitit): on this machine's processes or on a SLURM cluster.

- `settings.py`  the `launcher` node of a recipe (`recipes/launcher/*.yaml`): which executor, which resources
- `executor.py`  a configured submitit executor, and the scheduler's view of a submitted job
- `status.py`    the status file every job keeps (RUNNING, REQUEUED, DONE, FAILED), and waiting on others'
- `fit_job.py`   one `pixelqa.fit` run as a checkpointable job (requeued jobs resume with `ckpt=last`)
- `runs.py`      submitting, resubmitting and reporting a set of fit jobs with dependencies (used by the grid)
- `shard_jobs.py` a shard build or mixture as a job array plus a final verify job
"""
