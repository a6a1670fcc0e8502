"""Run UniPixel on your own image, video or frames folder: `python -m pixelqa.predict --model M --media PATH --text T`.

Prompts: `--point x,y[,t]`, `--box x1,y1,x2,y2[,t]` (pixels, frame t, default 0), `--mask PNG[,t]`, numbered
0, 1, ... in the order given. Outputs go to `--out` (see `pixelqa.predict.outputs`); `--chat` opens a multi-round
session in the terminal whose later turns may name memory objects (`What is [0] holding?`). User errors print one
line and exit with status 2; signs of damage in the media (a truncated video) print one `warning:` line each and go
to run.json. Values may start with '-' (`--point -1,40`), so that a prompt outside the frame is named as such.
"""

from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.footprint import available_bytes, check_footprint
from pixelqa.predict.frames import LLM_FRAMES, sam_frame_ids
from pixelqa.predict.media import media_warnings, probe_media, read_media
from pixelqa.predict.prompts import PromptAction, check_prompts, model_prompts, parse_prompt, place_refs
from pixelqa.prompt_format import object_ids_in

if TYPE_CHECKING:
    from pixelqa.predict.predictor import Prediction

QUIT = ("/quit", "/exit")
EXIT_INTERRUPTED = 130  # Ctrl-C, as fit and the data commands exit (128 + SIGINT)


def for_terminal(text: str) -> str:
    """`text` with control characters other than newline and tab escaped (`\\x1b`): a model's answer is printed to a
    terminal, where an escape sequence would act (answer.txt keeps the text as generated)."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else repr(ch)[1:-1] for ch in text)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a PredictInputError (one line, exit 2) instead of usage and a message; it
    records the option strings added to it (`option_names`, and `value_options` for those taking one value), which
    `join_dash_values` reads (argument groups are not recorded: predict has none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """An ArgumentParser with `-h/--help` added here, so that it is recorded like every other option."""
        self.option_names: set[str] = set()
        self.value_options: set[str] = set()
        super().__init__(*args, add_help=False, **kwargs)
        self.add_argument(
            "-h", "--help", action="help", default=argparse.SUPPRESS, help="show this help message and exit"
        )

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """argparse's add_argument, recording the new option's strings."""
        action = super().add_argument(*args, **kwargs)
        self.option_names.update(action.option_strings)
        if action.nargs is None:  # exactly one value (not a flag, not a list)
            self.value_options.update(action.option_strings)
        return action

    def error(self, message: str) -> NoReturn:
        """Raise the error as predict's others are raised (argparse's `argument --x: ...` shortened to `--x: ...`)."""
        raise PredictInputError(message.removeprefix("argument "))


def count_arg(text: str, minimum: int = 1) -> int:
    """An integer >= `minimum` of a count option (argparse names the option in front of the message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer >= {minimum}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= {minimum}")
    return value


def length_arg(text: str) -> int:
    """An integer >= 0 of `--max-new-tokens` (0: segment the prompts without answering, as the API allows)."""
    return count_arg(text, 0)


def join_dash_values(parser: OneLineParser, argv: list[str]) -> list[str]:
    """argv with `--opt -1,40` written `--opt=-1,40` for options taking a value, so argparse takes a value that
    starts with '-' (a negative coordinate, a text) as the value rather than as an unknown option."""
    takes_value, known = parser.value_options, parser.option_names
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a == "--":
            out += argv[i:]
            break
        if (
            a in takes_value
            and nxt is not None
            and nxt.startswith("-")
            and not nxt.startswith("--")
            and nxt.split("=", 1)[0] not in known
        ):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def build_parser() -> OneLineParser:
    """The command-line options of predict."""
    parser = OneLineParser(prog="python -m pixelqa.predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="released folder, save_pretrained folder or Lightning ckpt; 'tiny': the tiny model with random weights "
        "(on CPU unless --device names one), for trying the command",
    )
    parser.add_argument("--media", required=True, help="image file, video file (mp4/webm/avi/...) or frames folder")
    parser.add_argument("--text", help="the question or instruction (optional with --chat: asked for)")
    for kind, meta in (("point", "x,y[,t]"), ("box", "x1,y1,x2,y2[,t]"), ("mask", "PNG[,t]")):
        parser.add_argument(f"--{kind}", dest="prompts", action=PromptAction, kind=kind, metavar=meta, default=[])
    parser.add_argument(
        "--out",
        default="predict_out",
        help="output folder: new, empty or an earlier predict output, replaced whole (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frames",
        type=count_arg,
        default=None,
        help="read N frames of a longer video (uniform with both ends); every prompt frame is read too, so more "
        "prompt frames than N make more (a warning says so)",
    )
    parser.add_argument(
        "--llm-frames", type=count_arg, default=LLM_FRAMES, help="frames the LLM sees (default %(default)s)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=length_arg,
        default=64,
        help="answer length limit; 0 segments the prompts without answering (default %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (default %(default)s)"
    )
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint needing full unpickling")
    parser.add_argument("--chat", action="store_true", help="interactive multi-round session in the terminal")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (so does TQDM_DISABLE=1)")
    parser.add_argument(
        "--no-memory-check",
        action="store_true",
        help="read the frames even when their frames and masks look larger than the available memory",
    )
    parser.add_argument(
        "--propagation",
        choices=("forward", "bidirectional"),
        default=None,
        help="forward: prompt SAM on the first frame (as released, the default); bidirectional: on the prompt's or "
        "the best-supported frame, then both ways",
    )
    return parser


def _check_counts(args: argparse.Namespace) -> None:
    """Integer options in range (for a Namespace built without the parser)."""
    for name, minimum in (("max_frames", 1), ("llm_frames", 1), ("max_new_tokens", 0)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise PredictInputError(f"--{name.replace('_', '-')}: got {value}, expected an integer >= {minimum}")


def _first_turn_flags(exc: PredictInputError) -> PredictInputError:
    """An API error of the first turn on `--text` (too long for the model) named by the options that set it."""
    message = str(exc)
    if message.startswith("text:"):
        message = "--" + message.replace("llm_frames", "--llm-frames")
    return PredictInputError(message)


def memory_summary(pred: Prediction) -> str:
    """One line naming every memory object and the frames its mask covers."""
    if not pred.memory:
        return "memory: empty"
    names = pred.media.names
    parts = []
    for k, m in pred.memory.items():
        seen = [t for t in range(m.shape[0]) if bool(m[t].any())]
        where = f"frames {names[seen[0]]}..{names[seen[-1]]} ({len(seen)}/{m.shape[0]})" if seen else "no mask"
        parts.append(f"[{k}] {where}")
    return "memory: " + "; ".join(parts)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Validate the inputs, load the model, run one turn (or a chat session) and write the outputs."""
    from pixelqa.files import FolderNotReplaceable, FolderTaken, atomic_folder
    from pixelqa.predict.loading import TINY_NOTE, is_tiny, load_model
    from pixelqa.predict.outputs import check_out, out_taken, write_outputs
    from pixelqa.predict.predictor import Predictor

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    progress = not args.no_progress  # TQDM_DISABLE is honoured where bars are made (pixelqa.predict.progress)
    _check_counts(args)
    out = check_out(args.out)  # before any slow work: a file there, someone else's folder, no write access
    if args.model == "":  # Path("") is the current folder
        raise PredictInputError("--model: got an empty path, expected a model folder, a checkpoint file or 'tiny'")
    tiny = is_tiny(args.model)
    if not tiny and not Path(args.model).exists():  # before any slow work
        raise PredictInputError(
            f"--model: {args.model!r} does not exist; expected a model folder, a checkpoint file or 'tiny' (random)"
        )
    if tiny:
        print(TINY_NOTE, file=sys.stderr)
    specs = [parse_prompt(kind, value) for kind, value in args.prompts]
    ids = list(range(len(specs)))
    if args.text is not None or not args.chat:
        first = place_refs(args.text or "", ids)
        for k in object_ids_in(first):
            if k not in ids:
                raise PredictInputError(f"--text: names object [{k}], which is not in memory (memory is empty)")
    t0 = time.perf_counter()
    info = probe_media(args.media, progress)  # a video is decoded once here to count its frames: part of read_s
    for line in media_warnings(info):
        print(f"warning: {line}", file=sys.stderr)
    check_prompts(specs, info)
    frame_ids = sam_frame_ids(info.num_frames, args.max_frames, [s.frame for s in specs])
    if args.max_frames is not None and len(frame_ids) > args.max_frames:
        forced = ", ".join(str(t) for t in sorted({s.frame for s in specs}))
        print(
            f"warning: --max-frames: reading {len(frame_ids)} frames, not {args.max_frames}: every prompt frame is "
            f"read ({forced})",
            file=sys.stderr,
        )
    if not args.no_memory_check:  # before minutes of decoding end in the system killing the process
        check_footprint(len(frame_ids), (info.height, info.width), len(specs), available_bytes())
    media = read_media(args.media, frame_ids, info, progress=progress)
    read_s = time.perf_counter() - t0
    prompts = model_prompts(specs, info, media.frame_ids)
    t0 = time.perf_counter()
    try:
        model, model_info = load_model(args.model, args.device, args.trust_checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        if isinstance(exc, PredictInputError):
            raise
        raise PredictInputError(f"--model: {exc}") from None
    load_s = time.perf_counter() - t0
    if args.propagation is not None:
        model.cfg.mask_decoder.propagation = args.propagation
    predictor = Predictor(model, args.llm_frames, args.max_new_tokens, progress=progress, model_info=model_info)
    if not args.chat:
        try:
            pred = predictor.run(media, args.text, prompts)
        except PredictInputError as exc:
            raise _first_turn_flags(exc) from None
        pred.timings.update(read_s=read_s, load_s=load_s, end_to_end_s=read_s + load_s + pred.timings["total_s"])
        write_outputs(pred, out, [s.arg for s in specs], progress=progress)
        print(for_terminal(pred.answer), file=stdout)
        print(f"outputs: {out}", file=stdout)
        return 0
    pred, text, turn = None, args.text, 0
    try:
        with atomic_folder(out):  # an earlier output (check_out: predict's own files) gives way to this session's turns
            pass
    except FolderTaken as exc:  # another predict into this --out finished at the same moment: one line
        raise out_taken(exc) from None
    except FolderNotReplaceable as exc:  # its permissions changed since check_out
        raise PredictInputError(f"--out: {exc}") from None
    print("chat: type a message, /quit to end; name memory objects as [k]", file=stdout)
    status = 0
    while True:
        if text is None:
            print("you> ", end="", file=stdout, flush=True)
            try:
                line = stdin.readline()
            except KeyboardInterrupt:  # Ctrl-C at the prompt ends the session as end of input does
                print(file=stdout)
                status = EXIT_INTERRUPTED
                break
            if not line:
                break
            text = line.strip()
            if text in QUIT:
                break
            if not text:
                text = None
                continue
        n = turn + 1
        try:
            nxt = predictor.run(media, text, prompts if pred is None else [], history=pred)
            setup_s = read_s + load_s if n == 1 else 0.0
            nxt.timings.update(
                read_s=read_s if n == 1 else 0.0,
                load_s=load_s if n == 1 else 0.0,
                end_to_end_s=setup_s + nxt.timings["total_s"],
            )
            # written before the turn counts: an interrupted write leaves no turn folder and the history as it was
            write_outputs(nxt, out / f"turn{n}", [s.arg for s in specs] if n == 1 else None, progress)
        except PredictInputError as exc:
            if str(exc).startswith("--out:"):  # this session can write no turn: it ends as a one-turn run does
                raise
            if pred is None and text is args.text:  # the first turn's text came from --text: name the options
                exc = _first_turn_flags(exc)
            print(f"error: {exc}", file=sys.stderr)  # stderr: a redirected transcript keeps the conversation only
            text = None
            continue
        except KeyboardInterrupt:  # the turn is dropped (the API leaves history as it was); the session goes on
            print(file=stdout)
            print(f"stopped: turn {n} dropped (Ctrl-C); the conversation is as before it", file=sys.stderr)
            text = None
            continue
        pred, text, turn = nxt, None, n
        print(f"pixelqa> {for_terminal(pred.answer)}", file=stdout)
        print(memory_summary(pred), file=stdout)
    print(f"outputs: {out}", file=stdout)
    return status


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """CLI entry point; exit status 0 on success, 2 on a user error (one line on stderr), 130 on Ctrl-C (in --chat:
    at the prompt, after the outputs line)."""
    from pixelqa.quiet import silence_library_noise

    parser = build_parser()
    try:
        args = parser.parse_args(join_dash_values(parser, list(sys.argv[1:] if argv is None else argv)))
    except PredictInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    silence_library_noise()
    try:
        return run(args, stdin, stdout)
    except PredictInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: a stopped run leaves --out as it was
        print("\nerror: predict stopped (Ctrl-C); --out holds no partial output", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
