"""The embedded demo learns: after the default demo run (fixed seed), val J&F and answer accuracy on the
synthetic split are far above the untrained model's (scored in the same run with eval.before_fit=true)."""

import pytest

from pixelqa import fit


@pytest.mark.slow(seconds=240)  # the whole demo: started first (tests/conftest.py)
def test_default_demo_beats_the_untrained_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = fit.run(["recipe=stage3", "eval.before_fit=true", "tracking=none", "trainer.enable_progress_bar=false"])
    print({k: round(v, 4) for k, v in m.items() if k.endswith(("J&F", "qa_acc"))})
    # measured 2026-11-30 (released losses, decoder_lr 1e-4, pre-fill turn as released, object ids from 0, half the
    # memory questions as first turns): teacher-forced J&F 0.0 -> 0.374, QA 0.0 -> 0.267, dice 0.87 -> 0.33 (free
    # generation: J&F 0.0 -> 0.374, QA 0.05 -> 0.267; its QA margin is not checked: 10 samples a task). With the earlier
    # decoder_lr 3e-3 SAM collapsed (J&F 0.035, dice 0.64): the J&F and dice checks fail on it. QA stays at the
    # guessing level of the answers' format (docs/benchmarks.md, demo: the random tiny backbone does not learn to
    # read the frames in the demo's budget), so its margin checks the format is learned, not the content.
    assert m["val/J&F"] >= m["untrained/val/J&F"] + 0.3
    assert m["val/gen/J&F"] >= m["untrained/val/gen/J&F"] + 0.3  # what a user of the trained model gets
    assert m["val/qa_acc"] >= m["untrained/val/qa_acc"] + 0.2
    assert m["val/dice"] < 0.6 * m["untrained/val/dice"]
    assert m["val/lm"] < 0.5 * m["untrained/val/lm"]
