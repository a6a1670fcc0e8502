"""pixelqa.predict without a model: frame choice, prompt parsing and checks, media decoding, output encodings,
safe checkpoint loading, and every bad CLI input that fails before a model is loaded (exit 2, one line)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pixelqa.model.chat import Box, Point
from pixelqa.predict import __main__ as cli
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.frames import keep_forced, llm_positions, sam_frame_ids
from pixelqa.predict.loading import safe_torch_load
from pixelqa.predict.media import media_from_tensor, media_warnings, probe_media, read_media
from pixelqa.predict.outputs import davis_palette, id_map, rle_decode, rle_encode
from pixelqa.predict.predictor import Predictor
from pixelqa.predict.prompts import check_prompts, model_prompts, parse_prompt, place_refs

H, W = 48, 64


def frame_array(t: int) -> np.ndarray:
    """Frame t of the test clip: flat grey with a bright block whose row moves with t (survives lossy coding)."""
    a = np.full((H, W, 3), 60, np.uint8)
    a[4 + 2 * t : 20 + 2 * t, 10:40] = (230, 230, 230)
    return a


def write_video(path, n: int, codec: str = "mpeg4", faststart: bool = False) -> None:
    """An n-frame clip encoded by PyAV (faststart: the mp4 index, with its frame count, ahead of the frames)."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_array(t), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---- frames -----------------------------------------------------------------------------------------------------


def test_llm_frames_are_uniform_with_both_ends_and_prompt_frames_forced():
    # uniform_indices(20, 16) = round(arange(0, 20, 19/15))[:16], worked by hand
    assert llm_positions(20) == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]
    # frame 2 replaces its nearest (1 and 3 tie: the earlier), then 12 replaces 11 (11 and 13 tie: the earlier)
    assert keep_forced(20, 16, [12, 2]) == [0, 2, 3, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19]
    assert llm_positions(6) == [0, 1, 2, 3, 4, 5]  # short clips: every frame once (no repeats)
    assert keep_forced(8, 2, [3, 4, 5]) == [3, 4, 5]  # more prompt frames than k: all kept
    assert sam_frame_ids(20, None) == list(range(20))
    assert sam_frame_ids(20, 8, [3]) == [0, 3, 5, 8, 11, 14, 16, 19]  # round(arange(0, 20, 19/7)), 3 in
    with pytest.raises(ValueError, match="forced frame: got 20"):
        keep_forced(20, 4, [20])


# ---- prompts ------------------------------------------------------------------------------------------------------


def test_prompts_parse_check_and_normalise(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[5:10, 6:12] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    specs = [
        parse_prompt("point", "32,12"),
        parse_prompt("box", "8,4,40,24,3"),
        parse_prompt("mask", f"{tmp_path}/m.png,5"),
    ]
    info = probe_media(_image(tmp_path, 6))
    check_prompts(specs, info)
    assert specs[2].mask.sum() == 30 and specs[2].frame == 5
    got = model_prompts(specs, info, [0, 3, 5])
    assert got[0] == Point(0.5, 0.25, frame=0, object_id=0)
    assert got[1] == Box(8 / 64, 4 / 48, 40 / 64, 24 / 48, frame=1, object_id=1)
    assert got[2].frame == 2 and got[2].object_id == 2 and torch.equal(got[2].mask, torch.from_numpy(mask > 0))


def _image(tmp_path, frames: int = 1):
    """A frames folder of `frames` test frames (a single image path when frames == 1)."""
    if frames == 1:
        Image.fromarray(frame_array(0)).save(tmp_path / "img.png")
        return tmp_path / "img.png"
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(frames):
        Image.fromarray(frame_array(t)).save(folder / f"{t:05d}.png")
    return folder


def test_text_places_one_ref_per_prompt():
    assert place_refs("What is it?", [0, 1]) == "[0] <|ref|> [1] <|ref|> What is it?"
    assert place_refs("Is <|ref|> near <|ref|>?", [0, 1]) == "Is <|ref|> near <|ref|>?"
    assert place_refs("Describe the scene.", []) == "Describe the scene."
    with pytest.raises(PredictInputError, match="holds 1 <|ref|> but 2 prompt"):
        place_refs("Is <|ref|> red?", [0, 1])
    with pytest.raises(PredictInputError, match="--text: got an empty text"):
        place_refs("  ", [])


# ---- media --------------------------------------------------------------------------------------------------------


def test_video_file_frames_folder_and_image_decode(tmp_path):
    write_video(tmp_path / "clip.mp4", 9)
    info = probe_media(tmp_path / "clip.mp4")
    assert (info.kind, info.num_frames, info.height, info.width, info.fps) == ("video", 9, H, W, 10.0)
    media = read_media(tmp_path / "clip.mp4", [0, 4, 8], info)
    assert media.frames.shape == (3, 3, H, W) and media.frame_ids == [0, 4, 8]
    assert media.names == ["00000", "00004", "00008"] and media.kind == "video"
    for i, t in enumerate([0, 4, 8]):  # lossy codec: close to the drawn frame, and far from the others
        got = media.frames[i].permute(1, 2, 0).numpy().astype(float)
        assert np.abs(got - frame_array(t)).mean() < 6
        assert np.abs(got - frame_array(t + 3 if t < 8 else 0)).mean() > 10
    folder = read_media(_image(tmp_path, 4))
    assert folder.frames.shape == (4, 3, H, W) and folder.kind == "video"
    assert torch.equal(folder.frames[2].permute(1, 2, 0), torch.from_numpy(frame_array(2)))  # PNG: exact
    image = read_media(_image(tmp_path, 1))
    assert image.kind == "image" and image.frames.shape == (1, 3, H, W)


def sideways_jpeg(path, orientation: int = 6) -> np.ndarray:
    """A 160x120 JPEG stored sideways with an EXIF orientation tag; returns the stored (120, 160, 3) pixels."""
    a = np.full((120, 160, 3), 40, np.uint8)
    a[0:30, 0:40] = (240, 40, 40)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif, quality=95)
    return a


def test_jpeg_exif_orientation_is_applied_to_images_and_frames(tmp_path):
    stored = sideways_jpeg(tmp_path / "photo.jpg")
    # orientation 6: a viewer turns the stored picture 90 degrees clockwise (EXIF 2.3, tag 0x0112)
    shown = np.rot90(stored, k=-1)
    info = probe_media(tmp_path / "photo.jpg")
    assert (info.height, info.width) == (160, 120)
    media = read_media(tmp_path / "photo.jpg")
    got = media.frames[0].permute(1, 2, 0).numpy().astype(float)
    assert got.shape == shown.shape and np.abs(got - shown).mean() < 4
    assert got[5:25, 95:115, 0].mean() > 200 and got[5:25, 5:25, 0].mean() < 80  # the red block is top-right
    assert media.meta["exif_orientation"] == {"00000": 6}
    # a click on the picture as shown is inside it; one inside the stored (sideways) frame only is not
    check_prompts([parse_prompt("point", "100,140")], info)
    with pytest.raises(PredictInputError, match="outside the 120x160 frame"):
        check_prompts([parse_prompt("point", "140,100")], info)
    folder = tmp_path / "frames"
    folder.mkdir()
    sideways_jpeg(folder / "a.jpg")
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(folder / "b.png")  # already upright: no tag
    frames = read_media(folder)
    assert frames.frames.shape == (2, 3, 160, 120) and frames.meta["exif_orientation"] == {"a": 6}
    (tmp_path / "plain").mkdir()
    plain = read_media(_image(tmp_path / "plain", 1))
    assert plain.meta["exif_orientation"] == {}


def test_truncated_video_is_counted_and_reported(tmp_path):
    write_video(tmp_path / "whole.mp4", 30, faststart=True)
    whole = probe_media(tmp_path / "whole.mp4")
    assert (whole.num_frames, whole.declared_frames) == (30, 30) and media_warnings(whole) == []
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])  # a download cut short
    cut = probe_media(tmp_path / "cut.mp4")
    assert cut.declared_frames == 30 and 0 < cut.num_frames < 30
    assert len(read_media(tmp_path / "cut.mp4", info=cut).frame_ids) == cut.num_frames
    (line,) = media_warnings(cut)
    assert "cut.mp4" in line and "declares 30 frames" in line and f"only {cut.num_frames} decode" in line
    # the API reading the path itself warns too (NoChat stops the turn once the media is read)
    with pytest.warns(UserWarning, match="declares 30 frames"), pytest.raises(AssertionError, match="chat reached"):
        Predictor(NoChat(), model_info={"format": "stand-in"}).run(tmp_path / "cut.mp4", "What is it?")


def test_mask_file_names_may_hold_commas(tmp_path):
    Image.fromarray(np.ones((H, W), np.uint8)).save(tmp_path / "my,mask.png")
    whole = parse_prompt("mask", f"{tmp_path}/my,mask.png")
    assert (whole.mask_path, whole.frame) == (f"{tmp_path}/my,mask.png", 0)
    framed = parse_prompt("mask", f"{tmp_path}/my,mask.png,3")
    assert (framed.mask_path, framed.frame) == (f"{tmp_path}/my,mask.png", 3)
    missing = parse_prompt("mask", f"{tmp_path}/other,mask.png")  # no such file: the whole value is the name
    assert missing.mask_path == f"{tmp_path}/other,mask.png"
    with pytest.raises(PredictInputError, match="got frame 'x'"):
        parse_prompt("mask", f"{tmp_path}/my,mask.png,x")


def test_progress_bars_follow_no_progress_and_tqdm_disable(tmp_path, monkeypatch, capsys):
    write_video(tmp_path / "clip.mp4", 3)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    read_media(tmp_path / "clip.mp4", progress=True)
    assert "decoding frames" in capsys.readouterr().err  # not vacuous: a bar is drawn when asked for
    read_media(tmp_path / "clip.mp4", progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    read_media(tmp_path / "clip.mp4", progress=True)
    assert capsys.readouterr().err == ""


class NoChat:
    """A model stand-in whose chat must not be reached (inputs refused before it)."""

    def chat(self, **kwargs):
        raise AssertionError("chat reached")


@pytest.mark.parametrize("prefix", ["[0] <|seg|>", "The <|mem|> is", "See <|ref|>"])
def test_predictor_refuses_special_tokens_in_the_assistant_prefix(prefix):
    predictor = Predictor(NoChat(), model_info={"format": "stand-in"})
    media = media_from_tensor(torch.zeros(1, 3, H, W, dtype=torch.uint8))
    with pytest.raises(PredictInputError, match=r"assistant_prefix: holds <\|"):
        predictor.run(media, "What is it?", assistant_prefix=prefix)


# ---- outputs ------------------------------------------------------------------------------------------------------


def test_rle_round_trip_palette_and_id_map():
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    rle = rle_encode(m)
    assert rle["size"] == [5, 7] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_decode(rle), m)
    assert not np.array_equal(rle_decode(rle_encode(~m)), m)
    pal = davis_palette()  # the DAVIS / VOC colours: 1 dark red, 2 dark green, 3 olive, 4 navy, 255 light grey
    assert pal[3:15] == [128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] and pal[-3:] == [224, 224, 192]
    a, b = np.zeros((1, 5, 7), bool), np.zeros((1, 5, 7), bool)
    a[0, 0:3, 0:3] = True
    b[0, 2:5, 2:5] = True
    ids = id_map({0: a, 3: b}, 0, (5, 7))
    assert ids[0, 0] == 1 and ids[4, 4] == 4 and ids[2, 2] == 4 and ids[0, 6] == 0  # overlap: the higher id


# ---- safe loading -------------------------------------------------------------------------------------------------


class RunsCode:
    """Pickles as a call that touches a marker file: plain torch.load would run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_needing_code_is_refused_unless_trusted(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"model": {"preset": "tiny"}}}, plain)
    assert torch.equal(safe_torch_load(plain)["state_dict"]["w"], torch.ones(2))
    evil = tmp_path / "evil.ckpt"
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "x": RunsCode(str(marker))}, evil)
    with pytest.raises(PredictInputError, match="io.open.*refused.*--trust-checkpoint"):
        safe_torch_load(evil)
    assert not marker.exists()
    safe_torch_load(evil, trust=True)
    assert marker.exists()  # what trusting means


def test_cli_refuses_an_unsafe_checkpoint_with_exit_2(tmp_path, capsys):
    Image.fromarray(frame_array(0)).save(tmp_path / "img.png")
    evil = tmp_path / "evil.ckpt"
    torch.save({"x": RunsCode(str(tmp_path / "ran"))}, evil)
    assert cli.main(["--model", str(evil), "--media", str(tmp_path / "img.png"), "--text", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and "refused" in err[0]
    assert not (tmp_path / "ran").exists()


# ---- bad input: one line, exit 2, before any model is loaded --------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_inputs")
    write_video(root / "clip.mp4", 6)
    Image.fromarray(frame_array(0)).save(root / "img.png")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(root / "small_mask.png")
    Image.fromarray(np.ones((10, 10), np.uint8)).save(root / "my,mask.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "empty_mask.png")
    (root / "empty_dir").mkdir()
    (root / "unused").mkdir()  # exists, so the model check passes; every case fails before loading
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("not predict's")
    return root


BAD = [
    (["--media", "{r}/missing.mp4"], ["--media", "missing.mp4", "does not exist"]),
    (["--media", "{r}/corrupt.mp4"], ["--media", "corrupt.mp4", "cannot be decoded"]),
    (["--media", "{r}/corrupt.png"], ["--media", "corrupt.png", "cannot be decoded as an image"]),
    (["--media", "{r}/empty_dir"], ["--media", "empty_dir", "without frame images"]),
    (["--point", "70,10"], ["--point", "'70,10'", "outside the 64x48 frame"]),
    (["--point", "10,-1"], ["--point", "'10,-1'", "outside"]),
    (["--point", "a,b"], ["--point", "'a,b'", "x,y[,t]"]),
    (["--box", "10,10,80,20"], ["--box", "'10,10,80,20'", "inside the 64x48 frame"]),
    (["--box", "30,10,20,20"], ["--box", "'30,10,20,20'", "x1 < x2"]),
    (["--point", "10,10,6"], ["--point", "frame 6", "past the end", "6 frame(s)"]),
    (["--point", "10,10,x"], ["--point", "frame 'x'", "integer frame index"]),
    (["--mask", "{r}/small_mask.png"], ["--mask", "small_mask.png", "10x10", "64x48"]),
    (["--mask", "{r}/empty_mask.png"], ["--mask", "empty_mask.png", "empty"]),
    (["--mask", "{r}/nothing.png,0"], ["--mask", "nothing.png", "does not exist"]),
    (["--text", ""], ["--text", "empty text"]),
    (["--text", "What is [3] doing?"], ["--text", "[3]", "not in memory"]),
    (["--text", "Is <|ref|> red?"], ["--text", "holds 1 <|ref|> but 0 prompt"]),
    (["--max-frames", "0"], ["--max-frames", "got 0"]),
    (["--max-frames", "-2"], ["--max-frames", "got -2", "integer >= 1"]),
    (["--llm-frames", "abc"], ["--llm-frames", "got 'abc'", "integer >= 1"]),
    (["--point", "-1,40"], ["--point", "'-1,40'", "outside the 64x48 frame"]),
    (["--box", "-5,0,10,10"], ["--box", "'-5,0,10,10'", "inside the 64x48 frame"]),
    (["--mask", "{r}/my,mask.png"], ["--mask", "my,mask.png", "10x10", "64x48"]),
    (["--propagation", "sideways"], ["--propagation", "invalid choice: 'sideways'"]),
    (["--media", "{r}/clip.mp4", "--bogus", "1"], ["unrecognized arguments: --bogus 1"]),
    (["--model", "{r}/no_model"], ["--model", "no_model", "does not exist"]),
    (["--text", "Is <|mem|> red?"], ["--text", "<|mem|>", "the model or its processor writes"]),
    (["--text", "Look <|image_pad|>"], ["--text", "<|image_pad|>", "plain text"]),
    (["--out", "{r}/img.png"], ["--out", "img.png", "is not a folder"]),
    (["--out", "{r}/foreign"], ["--out", "foreign", "holds files predict did not write"]),
    (["--out", "{r}/img.png/sub"], ["--out", "img.png", "not a writable folder"]),
]


@pytest.mark.parametrize("extra,expect", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_and_exit_2(inputs, capsys, extra, expect):
    args = {"--model": str(inputs / "unused"), "--media": str(inputs / "clip.mp4"), "--text": "What is it?"}
    extra = [e.replace("{r}", str(inputs)) for e in extra]
    pairs = dict(zip(extra[::2], extra[1::2]))
    argv = []
    for key in ("--model", "--media", "--text"):
        argv += [key, pairs.pop(key, args[key])]
    for key, value in pairs.items():
        argv += [key, value]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err
    for part in expect:
        assert part in lines[0], (part, lines[0])


def test_answers_are_printed_with_control_characters_escaped():
    from pixelqa.predict.__main__ import for_terminal

    assert for_terminal("red\x1b[31m text\x07\nline 2\tend \x7f é") == "red\\x1b[31m text\\x07\nline 2\tend \\x7f é"
    assert for_terminal("plain answer [0] <|seg|>.") == "plain answer [0] <|seg|>."


def test_values_starting_with_a_dash_are_joined_from_the_options_the_parser_recorded():
    parser = cli.build_parser()
    # recorded as the options were added (argparse's private tables are not read)
    assert {"--text", "--point", "--box", "--mask", "--max-frames", "--propagation"} <= parser.value_options
    assert not {"--chat", "--no-progress", "--trust-checkpoint", "-h", "--help"} & parser.value_options
    assert {"-h", "--help", "--chat", "--text"} <= parser.option_names
    join = cli.join_dash_values
    assert join(parser, ["--point", "-1,40", "--text", "-x"]) == ["--point=-1,40", "--text=-x"]
    # a known option, a double-dash word (an abbreviation, an unknown option) and anything after `--` stay as given
    for argv in (["--text", "-h"], ["--text", "--cha"], ["--text", "--xx"], ["--", "--text", "-x"]):
        assert join(parser, argv) == argv
    required = ["--model", "m", "--media", "v.mp4"]
    assert parser.parse_args(join(parser, [*required, "--text", "-x", "--point", "-1,40"])).text == "-x"
    for after in ("--cha", "--xx", "-h"):
        with pytest.raises(PredictInputError, match="^--text: expected one argument$"):
            parser.parse_args(join(parser, [*required, "--text", after]))
