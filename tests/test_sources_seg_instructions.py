"""The segmentation sources train on the released instruction families, variants and responses.

Expected strings are copied from the reference notes (unipixel-official-code.md §4.6 and the §4.7 per-source
table), not from our constants, so a drift on either side fails here.
"""

from __future__ import annotations

from fixtures_image import build_reasonseg, build_refer
from fixtures_video import build_groundmore, build_mask_dict_vos, build_ref_sav_train, build_revos, build_vicas

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import SkippedSample
from pixelqa.data.sources._instructions import phrase_query
from pixelqa.data.sources.vos import seg_turns
from pixelqa.eval import templates
from pixelqa.prompt_format import SEG

QUERY_VIDEO = (
    "Can you segment the {} in this video?",
    "Please segment the {} in this video.",
    "Can you find the {} in the video?",
    "Segment the {} in the video.",
    "Track the {} in this video.",
    "Where is the {} in this video? Please respond with the segmentation mask.",
    "What is the {}? Please output the segmentation mask.",
)
QUERY_IMAGE = (
    "Can you segment the {} in this image?",
    "Please segment the {} in this image.",
    "Can you find the {} in the image?",
    "Segment the {} in the image.",
    "Track the {} in this image.",
    "Where is the {} in this image? Please respond with the segmentation mask.",
    "What is the {}? Please output the segmentation mask.",
)
SENTENCE = (
    "{} Please provide the segmentation mask.",
    "{} Please respond with the segmentation mask.",
    "{} Output the segmentation mask.",
    "{} Give me the segmentation results directly.",
    "{} Segment the target directly.",
)
EXPLANATORY = (
    "{} Please provide the segmentation mask and explain why.",
    "{} Respond with the segmentation mask and explain the reason.",
    "{} Output the segmentation mask and give some explanations.",
    "{} Provide the segmentation mask while answering the question.",
    "{} Segment the relevant target and answer the question.",
)
QUESTION = (
    "{} Please answer the question and provide the segmentation mask.",
    "{} Please associate your answer with the segmentation mask.",
    "{} Answer the question and provide the corresponding segmentation mask.",
    "{} Give me the answer and segment the target.",
    "{} Provide a short answer while segmenting the relevant object.",
)
DESCRIPTION = (
    "Please segment the object according to the description: {}",
    "Segment the target according to the description: {}",
    "Analyze the following sentences and provide the corresponding segmentation mask: {}",
    "Given the description: {} Where is the described object in this video?",
    "Find the object according to the description: {}",
)
RESPONSES = (
    "The target is <|seg|>.",
    "The segmentation result is <|seg|>.",
    "Sure, the segmentation mask is <|seg|>.",
    "Sure, it is <|seg|>.",
    "<|seg|>.",
)


def filled(family: tuple[str, ...], text: str) -> set[str]:
    """Every variant of a family filled with `text`."""
    return {t.format(text) for t in family}


def normalised(query: str) -> str:
    """The reference's rule: strip the trailing '.', lowercase the first character, strip 'the ' / 'an ' / 'a '."""
    q = " ".join(query.split()).rstrip(".")
    q = q[:1].lower() + q[1:]
    return next((q[len(a) :] for a in ("the ", "an ", "a ") if q.startswith(a)), q)


def convert_all(name: str, root, split: str) -> list:
    """Every sample of a split, validated."""
    src = get_source(name)
    return [s.validate(check_frames=True) for item in src.items(root, split) for s in src.convert(root, split, item)]


def user_and_answer(sample) -> tuple[str, str]:
    """The first request and its answer."""
    return sample.turns[0].text, sample.turns[1].text


def test_query_variants_are_normalised_and_answered_with_a_released_response():
    seen = set()
    for i in range(60):
        user, answer = (t.text for t in seg_turns("The man in red.", f"v/{i}"))
        assert user in filled(QUERY_VIDEO, "man in red")  # '.' stripped, first letter lowered, 'the ' dropped
        assert answer in RESPONSES
        seen.add(user)
    assert len(seen) == len(QUERY_VIDEO)  # every variant is drawn
    assert seg_turns("A Dog", "k") == seg_turns("A Dog", "k")  # fixed by the sample key
    # only the first character is lowered, before the article goes: "An Apple." -> "Apple"
    assert {phrase_query("An Apple.", "img", i) for i in range(60)} == filled(QUERY_IMAGE, "Apple")


def test_mevis_is_always_query_revos_asks_questions_as_sentences(tmp_path):
    build_mask_dict_vos(
        tmp_path / "mevis",
        tmp_path / "mevis" / "valid_u" / "meta_expressions.json",
        tmp_path / "mevis" / "valid_u" / "mask_dict.json",
        tmp_path / "mevis" / "valid_u" / "JPEGImages",
    )
    for s in convert_all("mevis", tmp_path / "mevis", "valid_u"):
        user, answer = user_and_answer(s)
        assert user in filled(QUERY_VIDEO, normalised(s.meta["expression"]))
        assert answer in RESPONSES
    build_revos(tmp_path / "revos")
    by = {s.meta["exp_id"]: s for s in convert_all("revos", tmp_path / "revos", "valid")}
    assert user_and_answer(by["1"])[0] in filled(SENTENCE, "Which box enters the scene late?")
    assert user_and_answer(by["1"])[1] in RESPONSES


def test_ref_sav_description_and_vicas_sentence(tmp_path):
    build_ref_sav_train(tmp_path / "sav")
    for s in convert_all("ref_sav", tmp_path / "sav", "train"):
        user, answer = user_and_answer(s)
        assert user in filled(DESCRIPTION, " ".join(s.meta["expression"].split()))
        assert answer in RESPONSES
    build_vicas(tmp_path / "vicas")
    for s in convert_all("vicas", tmp_path / "vicas", "train"):
        user, answer = user_and_answer(s)
        assert user in filled(SENTENCE, " ".join(s.meta["expression"].split()))
        assert answer in RESPONSES


def test_groundmore_trains_on_the_question_family_it_is_evaluated_with(tmp_path):
    build_groundmore(tmp_path)
    for s in convert_all("groundmore", tmp_path, "train"):
        user, answer = user_and_answer(s)
        assert user in filled(QUESTION, s.meta["question"])
        assert answer == f"{s.meta['answer']} {SEG}."  # released: '{answer} SEG.'
        # the evaluation prompt (first variant) is one the model was trained on
        assert templates.segmentation_prompt(s.meta["question"], family="question") in filled(
            QUESTION, s.meta["question"]
        )


def test_reasonseg_and_refcoco_use_the_image_families(tmp_path):
    build_reasonseg(tmp_path / "rs")
    src = get_source("reasonseg")
    for s in src.samples(tmp_path / "rs", "train"):
        if isinstance(s, SkippedSample):  # c_3: no target, counted as skipped
            continue
        user, answer = user_and_answer(s)
        if s.meta["explanatory"]:
            assert user in filled(EXPLANATORY, s.meta["query"])
            assert any(answer.startswith(r + " ") for r in RESPONSES)  # response + ' ' + the explanation
        elif s.meta["is_sentence"]:
            assert user in filled(SENTENCE, " ".join(s.meta["query"].split())) and answer in RESPONSES
        else:
            assert user.endswith(("image?", "image.", "mask.")) and answer in RESPONSES
    build_refer(tmp_path / "refer")
    train = convert_all("refcoco", tmp_path / "refer", "train")
    asked = [t.text for s in train for t in s.turns if t.role == "user"]
    answers = [t.text for s in train for t in s.turns if t.role == "assistant"]
    assert any(a in filled(QUERY_IMAGE, "brown dog") for a in asked)  # "the brown dog" -> "brown dog"
    assert all(any(a in filled(QUERY_IMAGE, x) for x in ("man on the left", "guy in red", "brown dog")) for a in asked)
    assert set(answers) <= set(RESPONSES)
