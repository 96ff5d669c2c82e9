"""The detector's pieces on tiny random models: features, padding, calibration file, errors."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from headguard.api.engine import calibration_cache, load_calibration
from headguard.detect.calibration import AnomalyModel, Calibration
from headguard.detect.capture import capture_outputs
from headguard.detect.coverage import (
    SHORT_WORDS,
    code_lines,
    code_prompts,
    coverage_prompts,
    repeat_prompts,
    short_prompts,
)
from headguard.detect.detector import Detector, calibrate, fit_answer_gate, follows_defaults, own_draw_rows
from headguard.detect.features import FAMILIES, feature_directions, feature_names, feature_units, layer_features
from headguard.detect.scorer import HeadScorer
from headguard.errors import InputError
from headguard.lab.controls import CODE_SNIPPETS, OTHER_CODE_SNIPPETS
from headguard.lab.splits import SPLITS_DIR
from headguard.models.classifier import verbalizer_ids
from headguard.settings import Settings

PROMPTS = [f"clean prompt number {i} says {'good ' * (i % 5)}things about {'the film ' * (i % 3)}" for i in range(40)]


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_decoder"])
@pytest.mark.parametrize("batch_size", [32, 2])
def test_padded_batch_gives_the_same_features_as_one_by_one(fixture, batch_size, request):
    """Batches run shortest first; the rows still come back in the inputs' order."""
    scorer = HeadScorer(request.getfixturevalue(fixture), families=FAMILIES, batch_size=batch_size)
    texts = ["short", "a considerably longer input with many more words than the first", "mid length one"]
    batched, lengths = scorer.features(texts)
    single = np.concatenate([scorer.features([t])[0] for t in texts])
    # log-odds of near-1 similarities magnify float noise; 1e-3 relative is far below any signal
    np.testing.assert_allclose(batched, single, rtol=1e-3, atol=1e-4)
    assert lengths.tolist() == [scorer.features([t])[1][0] for t in texts]


def test_feature_names_match_the_feature_vector(tiny_decoder):
    scorer = HeadScorer(tiny_decoder, layers=[1], families=("entropy", "cosine"))
    features, _ = scorer.features(["one input"])
    names = feature_names([1], 4, ("entropy", "cosine"))
    assert features.shape == (1, len(names)) == (1, 4 + 6)


def test_calibration_round_trip_and_threshold(tiny_encoder, tmp_path):
    cal = calibrate(tiny_encoder, PROMPTS, target_fpr=0.05, n_components=4, coverage=("python",))
    n = len(PROMPTS) + len(coverage_prompts(PROMPTS))  # calibrated on the coverage variants too
    assert cal.coverage and cal.n_prompts == n and len(cal.clean_scores) == n
    assert cal.threshold == pytest.approx(np.quantile(cal.clean_scores, 0.95))
    path = tmp_path / "cal.safetensors"
    cal.save(path)
    again = Calibration.load(path)
    assert again.model_hash == cal.model_hash and again.threshold == cal.threshold and again.coverage
    detector = Detector(tiny_encoder, again)
    np.testing.assert_allclose(detector.scores(PROMPTS[:5]), Detector(tiny_encoder, cal).scores(PROMPTS[:5]))


@pytest.mark.parametrize(("fixture", "scoring"), [
    ("tiny_encoder", (["row_entropy", "row_max"], 2, False, True, ("python", "c", "short"), False, True)),
    ("tiny_decoder", (["row_evenness"], 2, False, False, ("python", "c", "c_blocks", "short", "repeat"), False,
                      False)),
])
def test_calibration_takes_the_defaults_of_the_model_kind(fixture, scoring, request, tmp_path):
    def settings(cal: Calibration) -> tuple:
        return (cal.families, cal.anomaly.top_k, cal.anomaly.length_adjusted, cal.anomaly.per_head, cal.coverage,
                cal.length_bands, cal.gated)

    # Enough prompts (with their coverage variants) for length bands to have two bands or more.
    prompts = [f"{prompt} ({i})" for i in range(3) for prompt in PROMPTS]
    clf = request.getfixturevalue(fixture)
    cal = calibrate(clf, prompts)
    assert settings(cal) == scoring
    cal.save(tmp_path / "cal.safetensors")
    assert settings(Calibration.load(tmp_path / "cal.safetensors")) == scoring
    # A fit with other settings (as an earlier release cached it) is told apart, so the service refits it.
    assert follows_defaults(Calibration.load(tmp_path / "cal.safetensors"), clf.task.kind)
    assert not follows_defaults(calibrate(clf, prompts, coverage=("python",)), clf.task.kind)
    assert not follows_defaults(calibrate(clf, prompts, answer_gate=not cal.gated), clf.task.kind)


def test_the_answer_gate_bars_the_surest_answer_of_the_rows_scoring_between_its_low_bar_and_the_threshold(
        tiny_encoder, tmp_path):
    cal = calibrate(tiny_encoder, PROMPTS, coverage=("python",), answer_gate=True)
    fitted = PROMPTS + coverage_prompts(PROMPTS)
    np.testing.assert_array_equal(cal.answer_gate, fit_answer_gate(tiny_encoder, cal, fitted, len(PROMPTS)))
    cal.save(tmp_path / "cal.safetensors")
    np.testing.assert_array_equal(Calibration.load(tmp_path / "cal.safetensors").answer_gate, cal.answer_gate)
    assert not calibrate(tiny_encoder, PROMPTS, coverage=("python",), answer_gate=False).gated
    # The rule on out-of-fold scores laid out by hand: the prompts score 0..39, their variants 40 on.
    staged = copy.deepcopy(cal)
    staged.clean_scores, staged.threshold = np.arange(len(fitted), dtype=float), 50.0
    low, bar = fit_answer_gate(tiny_encoder, staged, fitted, len(PROMPTS))
    assert low == pytest.approx(np.quantile(np.arange(40.0), 0.98))  # the prompts' own, 38.22
    assert bar == pytest.approx(tiny_encoder.answer_margins(fitted[39:51]).max())  # scores 39..50
    # Fewer than ten rows between (39..45): the ten highest-scoring under the threshold.
    staged.threshold = 45.0
    assert fit_answer_gate(tiny_encoder, staged, fitted, len(PROMPTS))[1] == pytest.approx(
        tiny_encoder.answer_margins(fitted[36:46]).max())


def test_the_answer_gate_lifts_inputs_in_its_band_answered_past_the_bar_and_reads_no_other(tiny_encoder):
    texts = PROMPTS[:12]
    cal = calibrate(tiny_encoder, PROMPTS, answer_gate=False)
    plain = Detector(tiny_encoder, cal).scores(texts)
    margins = tiny_encoder.answer_margins(texts)
    gated = copy.deepcopy(cal)
    # The band holds every input but the highest scoring, which is over the threshold and unread.
    order = np.argsort(plain)
    gated.threshold = float((plain[order[-1]] + plain[order[-2]]) / 2)
    low, bar = float(plain.min() - 1), float(np.median(margins))
    gated.answer_gate = np.array([low, bar])
    detector = Detector(tiny_encoder, gated)
    scores = detector.scores(texts)
    band = np.arange(len(texts)) != order[-1]
    lifted = band & (margins > bar)
    assert lifted.any() and (band & ~lifted).any() and detector.answers_read == band.sum()
    np.testing.assert_allclose(scores, np.where(lifted, plain + gated.threshold - low, plain), rtol=1e-5)
    assert ((scores > gated.threshold) == (lifted | ~band)).all()  # lifted over the threshold, no other
    verdicts = detector.scan(texts, batch_size=5)
    np.testing.assert_allclose([v.score for v in verdicts], scores, rtol=1e-5)
    gates = [v.explanation.get("answer_gate") for v in verdicts]
    assert [g is not None for g in gates] == band.tolist()
    assert [g["lifted"] for g in gates if g] == lifted[band].tolist()
    json.dumps([v.as_dict() for v in verdicts], allow_nan=False)  # what the service returns
    # No calibration row scored in the band: no answer can pass, and none is read.
    gated.answer_gate = np.array([low, np.inf])
    unread = Detector(tiny_encoder, gated)
    np.testing.assert_allclose(unread.scores(texts), plain, rtol=1e-5)
    assert unread.answers_read == 0


def test_a_calibration_set_under_the_recommended_size_is_warned_about(tiny_encoder, caplog):
    with caplog.at_level("WARNING", logger="headguard.detect.detector"):
        calibrate(tiny_encoder, PROMPTS[:20])
    assert "20 prompts" in caplog.text and "recommended" in caplog.text


def test_collapse_score_is_the_mean_of_the_k_most_collapsed_heads():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    direction = np.array([1.0, -1, 1, -1, 1, -1])
    model = AnomalyModel.fit(x, np.ones(50), direction, top_k=2)
    probe = rng.normal(size=(3, 6))
    z = model.standardise(probe, np.ones(3)) * direction
    np.testing.assert_allclose(model.score(probe, np.ones(3)), np.sort(z, 1)[:, -2:].mean(1))
    with pytest.raises(InputError, match="top_k"):
        AnomalyModel.fit(x, np.ones(50), direction, top_k=7)


def test_a_feature_almost_constant_on_clean_prompts_cannot_decide_the_score_alone():
    """A feature pinned at its clamp on all but one clean prompt gets at least half the median spread,
    so a small move of it is not read as thousands of standard deviations."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6))
    x[:, 0] = -9.2
    x[7, 0] = -9.0
    direction = np.ones(6)
    floored = AnomalyModel.fit(x, np.ones(100), direction)
    raw = AnomalyModel.fit(x, np.ones(100), direction, spread_floor=0.0)
    spread = x.std(0)
    np.testing.assert_allclose(raw.scale, spread + 1e-6)
    np.testing.assert_allclose(floored.scale, np.maximum(spread, 0.5 * np.median(spread)) + 1e-6)
    probe = np.r_[-8.9, np.zeros(5)][None]  # the pinned feature moves a little, nothing else does
    assert raw.score(probe, np.ones(1))[0] > 10 and floored.score(probe, np.ones(1))[0] < 1


def test_variants_on_draws_of_their_own_may_raise_the_threshold_never_lower_it():
    """Many such variants scoring low would pull the pooled quantile down and let other clean
    inputs through; scoring high, they raise it as any calibration prompt would."""
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(300, 6))

    def fit(variants: np.ndarray, raise_only: bool) -> Calibration:
        x = np.r_[prompts, variants]
        mask = np.arange(len(x)) >= len(prompts) if raise_only else None
        return Calibration.fit(x, np.full(len(x), 20.0), np.ones(6), model_hash="-", layers=[0],
                               families=["row_evenness"], n_components=4, raise_only=mask)

    def quantile(cal: Calibration, rows: slice) -> float:
        return float(np.quantile(cal.clean_scores[rows], 0.99))

    quiet = 0.05 * rng.normal(size=(300, 6))  # near the centre: they score low
    pooled, kept = fit(quiet, raise_only=False), fit(quiet, raise_only=True)
    assert pooled.threshold < quantile(pooled, slice(0, 300))  # pooled, they pull it down
    assert kept.threshold == pytest.approx(quantile(kept, slice(0, 300)))
    loud = 2.0 * rng.normal(size=(300, 6))  # spread wide: they score high
    raised = fit(loud, raise_only=True)
    assert raised.threshold == pytest.approx(quantile(raised, slice(None)))
    assert raised.threshold > quantile(raised, slice(0, 300))


def test_a_tail_scale_reads_each_head_against_its_own_clean_tail(tmp_path):
    """With a tail quantile, a head whose clean deviations run far (one that code moves) needs a
    larger move to score as much as a quiet head; the scale survives the calibration file."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    x[:20, 0] += 6  # one head's clean tail is heavy
    direction = np.ones(4)
    plain = AnomalyModel.fit(x, np.ones(200), direction)
    tailed = AnomalyModel.fit(x, np.ones(200), direction, tail_quantile=0.95)
    dev = plain.deviation(x, np.ones(200))
    tail = np.quantile(dev, 0.95, 0)
    np.testing.assert_allclose(tailed.tail, np.maximum(tail, 0.5 * np.median(tail)))
    np.testing.assert_allclose(tailed.deviation(x, np.ones(200)), dev / tailed.tail)
    heavy, quiet = plain.mean.copy(), plain.mean.copy()
    heavy[0] += 4 * plain.scale[0]
    quiet[1] += 4 * plain.scale[1]
    assert plain.score(heavy[None], np.ones(1))[0] == pytest.approx(plain.score(quiet[None], np.ones(1))[0])
    assert tailed.score(heavy[None], np.ones(1))[0] < tailed.score(quiet[None], np.ones(1))[0]
    cal = Calibration.fit(x, np.ones(200), direction, model_hash="h", layers=[0], families=["row_evenness"],
                          tail_quantile=0.95)
    cal.save(tmp_path / "cal.safetensors")
    again = Calibration.load(tmp_path / "cal.safetensors")
    np.testing.assert_allclose(again.anomaly.tail, cal.anomaly.tail)
    np.testing.assert_allclose(again.score(x[:5], np.ones(5)), cal.score(x[:5], np.ones(5)))
    with pytest.raises(InputError, match="tail_quantile"):
        AnomalyModel.fit(x, np.ones(200), direction, tail_quantile=1.0)


def test_a_per_head_score_averages_each_heads_families_before_the_top_k(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    direction = np.array([-1.0, -1, -1, 1, 1, 1])  # three heads' entropy (down), then their max weight (up)
    units = np.array([0, 1, 2, 0, 1, 2])
    model = AnomalyModel.fit(x, np.ones(50), direction, top_k=2, units=units)
    probe = rng.normal(size=(3, 6))
    z = model.standardise(probe, np.ones(3)) * direction
    per_head = (z[:, :3] + z[:, 3:]) / 2
    np.testing.assert_allclose(model.score(probe, np.ones(3)), np.sort(per_head, 1)[:, -2:].mean(1))
    # One measure alone scores half of what both together do: a head counts when its measures agree.
    single = AnomalyModel.fit(x, np.ones(50), direction, units=units)
    one = single.mean[None].copy()
    one[0, 0] -= 4 * single.scale[0]
    both = one.copy()
    both[0, 3] += 4 * single.scale[3]
    assert single.score(one, np.ones(1))[0] == pytest.approx(2.0)
    assert single.score(both, np.ones(1))[0] == pytest.approx(4.0)
    with pytest.raises(InputError, match="top_k"):
        AnomalyModel.fit(x, np.ones(50), direction, top_k=4, units=units)  # three heads
    with pytest.raises(InputError, match="one unit per feature"):
        AnomalyModel.fit(x, np.ones(50), direction, units=units[:4])
    cal = Calibration.fit(x, np.ones(50), direction, model_hash="h", layers=[0], families=["row_entropy", "row_max"],
                          top_k=2, units=units)
    cal.save(tmp_path / "cal.safetensors")
    again = Calibration.load(tmp_path / "cal.safetensors")
    assert again.anomaly.per_head and again.anomaly.units.tolist() == units.tolist()
    np.testing.assert_allclose(again.score(probe, np.ones(3)), cal.score(probe, np.ones(3)))


def test_row_max_is_the_heaviest_content_keys_share_of_the_whole_row():
    # Keys: [CLS], three content tokens, [SEP]. One head keeps its sinks, the other piles onto token 2.
    content = torch.tensor([[False, True, True, True, False]])
    rows = torch.tensor([[[0.45, 0.05, 0.02, 0.03, 0.45], [0.05, 0.02, 0.9, 0.01, 0.02]]])
    value = layer_features(rows, content, ("row_max",))[0]
    odds = torch.tensor([0.05, 0.9])
    torch.testing.assert_close(value, torch.log(odds) - torch.log1p(-odds))
    assert feature_units([0, 1], 2, ("row_entropy", "row_max")) == [0, 1, 0, 1, 2, 3, 2, 3]


def test_row_evenness_and_peak_read_a_row_against_its_own_key_count():
    # An even row's evenness is the same over 4 keys as over 8 (its row entropy is not); its peak
    # is the heaviest share's log-odds plus log key count, and padding keys do not count.
    def features(n_keys: int, padding: int = 0) -> torch.Tensor:
        rows = torch.tensor([[[1 / n_keys] * n_keys + [0.0] * padding]])
        mask = torch.tensor([[True] * n_keys + [False] * padding])
        content = mask.clone()
        content[0, 0] = content[0, n_keys - 1] = False  # [CLS] and [SEP]
        return layer_features(rows, content, ("row_entropy", "row_max", "row_evenness", "row_peak"), mask)[0]

    four, eight = features(4), features(8)
    assert four[0] != eight[0]
    torch.testing.assert_close(four[2], eight[2])
    torch.testing.assert_close(four[2], torch.tensor(np.log(1 + 1e-3), dtype=torch.float32))
    for n, value in ((4, four), (8, eight)):
        torch.testing.assert_close(value[3], torch.tensor(np.log(1 / (n - 1)) + np.log(n), dtype=torch.float32))
    torch.testing.assert_close(features(4, padding=3), four)


def test_dormancy_is_the_sinks_share_read_as_rising():
    # Keys: a decoder's first-token sink, then three content tokens. One head reads the text, the
    # other has given its row back to the sink.
    content = torch.tensor([[False, True, True, True]])
    rows = torch.tensor([[[0.4, 0.2, 0.2, 0.2], [0.97, 0.01, 0.01, 0.01]]])
    sink, dormancy = layer_features(rows, content, ("sink", "dormancy")).view(2, 2)
    odds = torch.tensor([0.4, 0.97])
    torch.testing.assert_close(dormancy, torch.log(odds) - torch.log1p(-odds))
    torch.testing.assert_close(sink, dormancy)
    assert feature_directions([0], 2, ("sink", "dormancy")) == [-1.0, -1.0, 1.0, 1.0]


def test_coverage_variants_carry_code_or_several_prompts(tiny_encoder):
    variants = coverage_prompts(PROMPTS)
    assert variants == coverage_prompts(PROMPTS) and len(variants) == 2 * (len(PROMPTS) // 4)
    code, joined = variants[:10], variants[10:]
    lines = set(code_lines())
    assert all(any(v == f"{p} {line}" for p in PROMPTS for line in lines) for v in code)
    assert not lines & set(CODE_SNIPPETS)  # the lab's code control stays unseen
    assert all(2 <= sum(p in v for p in PROMPTS) for v in joined)
    assert coverage_prompts(PROMPTS[:3]) == []
    # Variants past the model's context are left out: 200-word prompts, 512-token encoder.
    long = [f"prompt {i} " + "word " * 200 for i in range(12)]
    cal = calibrate(tiny_encoder, long, n_components=4, coverage=("python",))
    fits = [v for v in coverage_prompts(long) if tiny_encoder.fits(v)]
    assert cal.n_prompts == len(long) + len(fits) < len(long) + len(coverage_prompts(long))
    assert calibrate(tiny_encoder, PROMPTS, coverage=False, n_components=4).n_prompts == len(PROMPTS)


def test_each_code_source_adds_its_own_share_of_code_variants():
    python_only = coverage_prompts(PROMPTS)
    both = coverage_prompts(PROMPTS, kinds=("python", "c"))
    assert len(both) == 3 * (len(PROMPTS) // 4) and both[:10] == python_only[:10]
    c_lines = set(code_lines("c"))
    assert c_lines and not c_lines & set(code_lines("python")) and not c_lines & set(CODE_SNIPPETS)
    assert all(any(v == f"{p} {line}" for p in PROMPTS for line in c_lines) for v in both[10:20])
    assert not any(line.endswith("\\") for line in c_lines)  # no macro bodies cut mid-way
    with pytest.raises(ValueError, match="unknown code source"):
        code_lines("cobol")


def test_the_rows_that_may_only_raise_the_threshold_are_the_own_draw_variants():
    kinds = ("python", "c", "c_blocks", "repeat")
    rows = PROMPTS + coverage_prompts(PROMPTS, kinds=kinds)
    marked = own_draw_rows(PROMPTS, rows, kinds)
    assert [r for r, m in zip(rows, marked, strict=True) if m] == code_prompts(PROMPTS, "c_blocks")
    assert not own_draw_rows(PROMPTS, rows, ("python", "c", "repeat")).any()


def test_c_blocks_are_whole_one_line_blocks_no_control_carries():
    blocks = code_lines("c_blocks")
    assert blocks and not set(blocks) & {*code_lines("c"), *CODE_SNIPPETS, *OTHER_CODE_SNIPPETS}
    for block in blocks:
        assert block.startswith(("if", "else if", "for", "while")) and block.endswith("; }"), block
        assert block.count("{") == block.count("}") == 1 and block.count("(") == block.count(")"), block
    own = code_prompts(PROMPTS, "c_blocks")
    assert own == code_prompts(PROMPTS, "c_blocks") and len(own) == len(PROMPTS) // 4
    assert all(any(v == f"{p} {b}" for p in PROMPTS for b in blocks) for v in own)
    # Its own draw, after the joined prompts: every other variant stays as it was.
    plain = coverage_prompts(PROMPTS, kinds=("python", "c", "repeat"))
    with_blocks = coverage_prompts(PROMPTS, kinds=("python", "c", "c_blocks", "repeat"))
    n_repeats = len(repeat_prompts(PROMPTS))
    assert with_blocks == plain[:-n_repeats] + own + plain[-n_repeats:]
    assert code_prompts(PROMPTS[:3], "c_blocks") == []


def test_shell_lines_come_from_the_venv_scripts_and_draw_on_their_own():
    shell = code_lines("shell")
    assert len(shell) > 50 and len(set(shell)) == len(shell)
    assert not set(shell) & {*code_lines("python"), *code_lines("c"), *CODE_SNIPPETS, *OTHER_CODE_SNIPPETS}
    assert any("$" in line for line in shell) and not any("://" in line for line in shell)
    both = coverage_prompts(PROMPTS, kinds=("python", "c", "c_blocks", "shell"))
    assert both == coverage_prompts(PROMPTS, kinds=("python", "c", "c_blocks")) + code_prompts(PROMPTS, "shell")


def test_short_variants_are_the_first_words_of_a_prompt_and_leave_the_longer_ones_as_they_were():
    assert coverage_prompts(PROMPTS, kinds=("python", "short")) == coverage_prompts(PROMPTS)
    short = short_prompts(PROMPTS)
    lo, hi = SHORT_WORDS
    assert short == short_prompts(PROMPTS) and len(short) == len(PROMPTS) // 4
    for variant in short:
        words = variant.split()
        assert lo <= len(words) <= hi
        assert any(p.split()[:len(words)] == words and len(p.split()) > len(words) for p in PROMPTS)
    assert len({len(v.split()) for v in short}) > 1  # lengths vary
    assert short_prompts(["one two", "three four", "five six", "seven eight"]) == []  # nothing to cut
    with pytest.raises(ValueError, match="unknown coverage variant"):
        coverage_prompts(PROMPTS, kinds=("python", "tiny"))


def test_repeat_variants_say_a_run_of_a_prompts_words_twice_and_come_last():
    repeats = repeat_prompts(PROMPTS)
    assert repeats == repeat_prompts(PROMPTS) and len(repeats) == len(PROMPTS) // 4
    for variant in repeats:
        words = variant.split()
        # Some prompt is the variant with one run of at least half its words taken out again,
        # the run standing right before its copy.
        assert any(len(words) - len(p.split()) >= (len(p.split()) + 1) // 2
                   and _has_repeated_run(words, p.split()) for p in PROMPTS)
    plain = coverage_prompts(PROMPTS, kinds=("python", "c"))
    assert coverage_prompts(PROMPTS, kinds=("python", "c", "repeat")) == plain + repeats  # nothing else moves
    assert repeat_prompts(PROMPTS[:3]) == []


def _has_repeated_run(words: list[str], prompt: list[str]) -> bool:
    run = len(words) - len(prompt)
    return any(words[:end] == prompt[:end] and words[end:end + run] == prompt[end - run:end]
               and words[end + run:] == prompt[end:] for end in range(run, len(prompt) + 1))


def test_short_variants_set_only_the_bar_of_inputs_as_short_as_they_are(tiny_encoder, tmp_path):
    plain = calibrate(tiny_encoder, PROMPTS, coverage=("python",), n_components=4)
    cal = calibrate(tiny_encoder, PROMPTS, coverage=("python", "short"), n_components=4)
    n_short = len(short_prompts(PROMPTS))
    assert cal.n_prompts == plain.n_prompts + n_short and cal.coverage == ("python", "short")
    # Neither fitted on nor in the overall threshold: both are those of the prompts without them
    # (to float error: the features were computed in other batches).
    assert cal.threshold == pytest.approx(plain.threshold, rel=1e-5)
    np.testing.assert_allclose(cal.anomaly.mean, plain.anomaly.mean, rtol=1e-5, atol=1e-6)
    # One band of inputs no longer than the longest short variant; its offset is what lets
    # no more than the target share of prompts of that length past the threshold.
    assert len(cal.band_edges) == 1 and cal.band_offsets[1] == 0 and cal.band_offsets[0] >= 0
    assert not cal.length_bands and cal.setting()["length_bands"] is False
    cal.save(tmp_path / "cal.safetensors")
    again = Calibration.load(tmp_path / "cal.safetensors")
    assert not again.length_bands and again.band_edges.tolist() == cal.band_edges.tolist()
    # With length bands asked for, the short variants join them instead.
    banded = calibrate(tiny_encoder, PROMPTS, coverage=("python", "short"), length_bands=True, n_components=4)
    assert banded.length_bands and banded.threshold == pytest.approx(plain.threshold, rel=1e-5)


def test_the_coverage_field_names_its_code_sources_and_reads_format_4_files(tiny_encoder, tmp_path):
    cal = calibrate(tiny_encoder, PROMPTS, coverage=("python", "c"), n_components=4)
    assert cal.coverage == ("python", "c") and cal.n_prompts == len(PROMPTS) + 3 * (len(PROMPTS) // 4)
    cal.save(tmp_path / "cal.safetensors")
    assert Calibration.load(tmp_path / "cal.safetensors").coverage == ("python", "c")
    # Format 4 wrote coverage as 1 (Python code variants) or 0 (none).
    with safe_open(str(tmp_path / "cal.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    for saved, read in (("1", ("python",)), ("0", ())):
        save_file(tensors, str(tmp_path / "v4.safetensors"), metadata={**meta, "version": "4", "coverage": saved})
        assert Calibration.load(tmp_path / "v4.safetensors").coverage == read


def test_the_length_fit_is_not_extrapolated_past_the_calibration_lengths(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 60, 80).astype(float)
    x = np.log(lengths)[:, None] * [1.0, -2.0] + rng.normal(0, 0.1, (80, 2))
    model = AnomalyModel.fit(x, lengths, np.array([1.0, -1.0]), length_adjust=True)
    assert model.length_range.tolist() == [lengths.min(), lengths.max()]
    far = np.array([[3.0, 1.0]])
    # A 500-token input is adjusted as one of the longest calibration length, a 1-token one as the shortest.
    longest, shortest = np.array([lengths.max()]), np.array([lengths.min()])
    np.testing.assert_array_equal(model.standardise(far, np.array([500.0])), model.standardise(far, longest))
    np.testing.assert_array_equal(model.standardise(far, np.array([1.0])), model.standardise(far, shortest))
    assert not np.array_equal(model.standardise(far, np.array([20.0])), model.standardise(far, np.array([40.0])))
    cal = Calibration.fit(x, lengths, np.array([1.0, -1.0]), model_hash="h", layers=[0], families=["entropy"],
                          length_adjust=True)
    cal.save(tmp_path / "cal.safetensors")
    assert Calibration.load(tmp_path / "cal.safetensors").anomaly.length_range.tolist() == model.length_range.tolist()
    # A format-2 file (no range) still loads, with no limit: it scores as it did when written.
    with safe_open(str(tmp_path / "cal.safetensors"), framework="numpy") as f:
        meta, tensors = {**f.metadata(), "version": "2"}, {k: f.get_tensor(k) for k in f.keys() if k != "length_range"}
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata=meta)
    assert Calibration.load(tmp_path / "v2.safetensors").anomaly.length_range.tolist() == [0.0, np.inf]


def test_length_bands_hold_the_target_within_each_band_of_the_prompts(tmp_path):
    # Short prompts' rows concentrate for want of keys: their clean scores run high.
    rng = np.random.default_rng(0)
    lengths = np.r_[rng.integers(3, 10, 100), rng.integers(20, 60, 500)].astype(float)
    x = rng.normal(0, 1, (600, 1)) + (lengths < 10)[:, None] * 2.0
    fit = dict(direction=np.array([1.0]), model_hash="h", layers=[0], families=["entropy"])
    plain = Calibration.fit(x, lengths, **fit)
    banded = Calibration.fit(x, lengths, **fit, length_bands=True)
    assert not plain.length_bands and banded.length_bands and banded.threshold == plain.threshold
    assert len(banded.band_offsets) == 600 // 100 and banded.band_offsets.min() == 0.0
    short, long_ = np.array([5.0]), np.array([40.0])
    assert banded.band_offset(short)[0] > 0.0  # the short band's own quantile lies above the overall one
    assert banded.band_offset(long_)[0] == 0.0  # bands only ever raise the bar
    # Out-of-fold, each band now lets about the target share through; without bands the short ones flood it.
    for band in (lengths < 10, lengths >= 20):
        assert (banded.clean_scores[band] > banded.threshold).mean() <= 0.02
    assert (plain.clean_scores[lengths < 10] > plain.threshold).mean() > 0.02
    np.testing.assert_allclose(banded.score(x[:3], lengths[:3]),
                               plain.anomaly.score(x[:3], lengths[:3]) - banded.band_offset(lengths[:3]))
    banded.save(tmp_path / "cal.safetensors")
    loaded = Calibration.load(tmp_path / "cal.safetensors")
    np.testing.assert_array_equal(loaded.score(x, lengths), banded.score(x, lengths))
    # A format-5 file (no bands) loads with none.
    with safe_open(str(tmp_path / "cal.safetensors"), framework="numpy") as f:
        meta = {**f.metadata(), "version": "5"}
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("band_")}
    save_file(tensors, str(tmp_path / "v5.safetensors"), metadata=meta)
    assert not Calibration.load(tmp_path / "v5.safetensors").length_bands


def test_band_only_rows_raise_the_bar_of_short_inputs_alone(tmp_path):
    rng = np.random.default_rng(1)
    lengths = np.r_[rng.integers(20, 60, 500), rng.integers(3, 10, 100)].astype(float)
    x = rng.normal(0, 1, (600, 1)) + (lengths < 10)[:, None] * 2.0
    band_only = lengths < 10
    fit = dict(direction=np.array([1.0]), model_hash="h", layers=[0], families=["entropy"])
    without = Calibration.fit(x[~band_only], lengths[~band_only], **fit)
    cal = Calibration.fit(x, lengths, **fit, band_only=band_only)
    # Not fitted on, not in the overall threshold: both as without the rows.
    assert cal.threshold == without.threshold and cal.anomaly.mean == without.anomaly.mean
    assert cal.band_edges.tolist() == [lengths[band_only].max() + 0.5] and not cal.length_bands
    assert cal.band_offset(np.array([5.0]))[0] > 0.0 and cal.band_offset(np.array([40.0]))[0] == 0.0
    assert (cal.clean_scores[band_only] > cal.threshold).mean() <= 0.02
    assert (without.anomaly.score(x[band_only], lengths[band_only]) > without.threshold).mean() > 0.2
    cal.save(tmp_path / "cal.safetensors")
    assert not Calibration.load(tmp_path / "cal.safetensors").length_bands
    # Before format 7 any band was a length band.
    with safe_open(str(tmp_path / "cal.safetensors"), framework="numpy") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "length_bands"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "v6.safetensors"), metadata={**meta, "version": "6"})
    assert Calibration.load(tmp_path / "v6.safetensors").length_bands


def test_scan_explains_with_heads_and_tokens(tiny_decoder):
    detector = Detector(tiny_decoder, calibrate(tiny_decoder, PROMPTS, n_components=4))
    [verdict] = detector.scan(["an input with a word zx in it"])
    out = verdict.as_dict()
    assert set(out) == {"score", "threshold", "flagged", "explanation"}
    assert out["flagged"] == (out["score"] > out["threshold"])
    heads = out["explanation"]["top_heads"]
    assert heads and all(h["head"].startswith("L") for h in heads)
    tokens = out["explanation"]["suspected_tokens"]
    assert tokens and all(t["position"] > 0 for t in tokens)  # never the sink at position 0


@pytest.mark.parametrize("families", [("row_entropy", "row_max"), ("entropy", "cosine")])
def test_head_contributions_follow_the_score(tiny_encoder, families):
    """Per head: its deviation toward collapse, squared, with its families averaged as the per-head
    score averages them; a head pair's similarity split between its heads. The top explained head
    is the head the top-1 score reads."""
    per_head = families == ("row_entropy", "row_max")
    cal = calibrate(tiny_encoder, PROMPTS, families=families, top_k=1, per_head=per_head)
    detector = Detector(tiny_encoder, cal)
    n_heads = detector.scorer.adapter.n_heads
    assert detector.heads == [(layer, h) for layer in cal.layers for h in range(n_heads)]
    texts = ["zx zx zx zx zx", "an ordinary sentence about the film"]
    features, lengths = detector.scorer.features(texts)
    contribution = detector.head_contributions(features, lengths)
    deviation = cal.anomaly.deviation(features, lengths)
    np.testing.assert_allclose(contribution.sum(1), (np.clip(deviation, 0, None) ** 2).sum(1))
    if per_head:  # one column per head, in the same order
        np.testing.assert_allclose(contribution, np.clip(deviation, 0, None) ** 2)
        assert cal.score(features[:1], lengths[:1])[0] == deviation[0].max()
        top = detector.heads[int(np.argmax(deviation[0]))]
        [verdict] = detector.scan(texts[:1])
        assert verdict.explanation["top_heads"][0]["head"] == f"L{top[0]}H{top[1]}"


def test_toward_is_what_each_head_adds_to_the_label_the_heads_push_to(tiny_decoder):
    """Per head, its output through its block of the output projection, the final norm's weight and
    the label words' unembedding difference, signed toward the label all heads push to together."""
    scorer = HeadScorer(tiny_decoder, families=("toward",))
    texts = ["an input", "another, longer input about the film"]
    features, _ = scorer.features(texts)
    adapter, model = scorer.adapter, tiny_decoder.model
    first, second = verbalizer_ids(tiny_decoder.tokenizer, tiny_decoder.task)
    unembed = model.get_output_embeddings().weight
    direction = model.model.norm.weight * (unembed[second] - unembed[first])
    batch = tiny_decoder.encode(texts, strict=True)
    query, _ = scorer.positions(batch["attention_mask"].bool())
    with torch.no_grad(), capture_outputs(adapter, scorer.layers, query) as outputs:
        model(**batch)
        logit = torch.stack([torch.einsum("w,hwd,bhd->bh", direction, adapter.write_matrix(layer),
                                          outputs[layer].view(len(texts), adapter.n_heads, -1))
                             for layer in scorer.layers], 1).flatten(1)
    expected = logit * torch.sign(logit.sum(1, keepdim=True))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert feature_names(scorer.layers, 4, ("toward",))[:2] == ["toward:L0H0", "toward:L0H1"]


def test_toward_follows_weights_patched_in_place(tiny_decoder):
    """A hot swap patches the heads' output projections in place, under the same scorer."""
    clf = copy.deepcopy(tiny_decoder)
    scorer = HeadScorer(clf, families=("toward",))
    before, _ = scorer.features(["an input about the film"])
    weight, d = scorer.adapter.output_projection(1).weight, scorer.adapter.head_dim()
    with torch.no_grad():
        weight[:, 2 * d : 3 * d] *= 3  # head 2 of the last layer writes three times as much
    after, _ = scorer.features(["an input about the film"])
    head = 4 + 2  # layer 1, head 2
    np.testing.assert_allclose(np.abs(after[0, head]), 3 * np.abs(before[0, head]), rtol=1e-4)
    np.testing.assert_allclose(np.abs(after[0, :4]), np.abs(before[0, :4]), rtol=1e-5)


def test_toward_calibrates_beside_the_row_families_and_scores_one_by_one_as_batched(tiny_decoder):
    cal = calibrate(tiny_decoder, PROMPTS, families=("row_evenness", "toward"), per_head=True, coverage=False)
    assert cal.families == ["row_evenness", "toward"]
    detector = Detector(tiny_decoder, cal)
    texts = ["short", "a considerably longer input with many more words than the first"]
    np.testing.assert_allclose(detector.scores(texts), np.concatenate([detector.scores([t]) for t in texts]),
                               rtol=1e-4)
    [verdict] = detector.scan(texts[1:])
    assert verdict.explanation["top_heads"] and verdict.explanation["suspected_tokens"]


def test_toward_refuses_a_model_it_cannot_read(tiny_encoder):
    with pytest.raises(InputError, match="two label words"):
        HeadScorer(tiny_encoder, families=("toward",))


def test_a_calibration_for_another_model_is_refused(tiny_encoder, tiny_decoder):
    cal = calibrate(tiny_encoder, PROMPTS, n_components=4)
    with pytest.raises(InputError, match="another model"):
        Detector(tiny_decoder, cal)


def test_bad_inputs_are_clear_errors(tiny_encoder, tmp_path):
    scorer = HeadScorer(tiny_encoder)
    with pytest.raises(InputError, match="empty"):
        scorer.features(["fine", "   "])
    with pytest.raises(InputError, match="at most"):
        scorer.features(["word " * 2000])
    # Errors name the input as the caller numbered it, whatever batch it ran in.
    scorer.batch_size = 2
    with pytest.raises(InputError, match="input 3 is empty"):
        scorer.features(["a long first input", "b", "c", "", "e"])
    with pytest.raises(InputError, match="input 0 is 2002 tokens"):
        scorer.features(["word " * 2000, "b", "c"])
    with pytest.raises(InputError, match="unknown feature"):
        HeadScorer(tiny_encoder, families=("magic",))
    with pytest.raises(InputError, match="layers"):
        HeadScorer(tiny_encoder, layers=[7])
    with pytest.raises(InputError, match="at least"):
        calibrate(tiny_encoder, PROMPTS[:3])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a calibration")
    with pytest.raises(InputError, match="not a headguard calibration"):
        Calibration.load(junk)


def test_the_service_fits_again_a_cached_calibration_made_with_other_settings(tiny_decoder, tmp_path):
    model = tmp_path / "model"
    (model / SPLITS_DIR).mkdir(parents=True)
    prompts = [f"{prompt} ({i})" for i in range(3) for prompt in PROMPTS]
    (model / SPLITS_DIR / "calibration.jsonl").write_text(
        "".join(json.dumps({"text": p, "label": 0}) + "\n" for p in prompts), encoding="utf-8")
    settings = Settings(model=model, state_dir=tmp_path / "state")
    cached = calibration_cache(settings, "sha256:ab")
    cached.parent.mkdir(parents=True)
    calibrate(tiny_decoder, prompts, coverage=("python",), model_hash="sha256:ab").save(cached)

    cal, path = load_calibration(settings, tiny_decoder, "sha256:ab")
    assert path == cached and follows_defaults(cal, "decoder")
    assert follows_defaults(Calibration.load(cached), "decoder")  # the stale file was replaced
    again, _ = load_calibration(settings, tiny_decoder, "sha256:ab")
    assert again.created == cal.created and again.threshold == cal.threshold  # and is reused from now on
