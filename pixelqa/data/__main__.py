"""`python -m pixelqa.data ...`: the commands of `pixelqa.data.cli`; build and mixture with `launcher=subprocess|slurm`
go to `pixelqa.launch.shard_jobs` as a job array plus a verify job (see docs/cluster.md)."""

from __future__ import annotations

import sys

from pixelqa.data import cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pixelqa.data`."""
    from pixelqa.launch.shard_jobs import launch_shard_build, launcher_args_of

    launcher_argv, argv = launcher_args_of(sys.argv[1:] if argv is None else list(argv))
    args = cli.parser().parse_args(argv)
    if launcher_argv and args.command not in ("build", "mixture"):  # else dropped without a word
        print(
            f"error: {launcher_argv[0]}: only build and mixture submit jobs; drop the launcher arguments",
            file=sys.stderr,
        )
        sys.exit(cli.EXIT_USER_ERROR)
    if launcher_argv and args.command in ("build", "mixture"):
        from pixelqa.config import RecipeError

        launched: list[bool] = []
        # Submitting is guarded like running: a bad recipe or a missing path is one line, not a traceback.
        try:
            cli.guarded(args.command, lambda: launched.append(launch_shard_build(args, argv, launcher_argv)))
        except RecipeError as err:  # an unknown or invalid launcher key, or no SLURM here: the user's to fix
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(cli.EXIT_USER_ERROR)
        if launched[0]:
            return
    cli.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
