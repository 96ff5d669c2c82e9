"""The detector's measured defaults, by where the query row is read (docs/METHOD.md §5).

An encoder reads the [CLS] row: its backdoor heads leave the [CLS]/[SEP] sinks to pile onto the
trigger, and a few heads carry it (MiniLM: three heads of one layer), so the mean of the two
most collapsed heads scores. A head counts as collapsed when two views of its whole row (sinks
included) agree, its entropy falling and one content key taking the sinks' mass: the two are
averaged per head. The prompts are calibrated on with their coverage variants
(detect/coverage.py): code in a message (Python and C lines) or several messages joined is not
anomalous by that alone, and the first few words of a prompt set the bar for inputs that short,
whose [CLS] row concentrates for want of keys. Of the 120 encoder settings measured on twelve
MiniLM models, this one keeps every group (held-out clean, five specificity controls, unseen
traffic) within 2 % on all twelve and catches 95.5 % of BadNets on movies and on SMS; the
previous default (the single most collapsed head, Python code only) let 3.6 % of the SMS clean
control's short messages through. Features are not adjusted for length: a line fitted on short
messages misjudged the same messages with a code snippet appended. The answer gate then reads
the model's answer for inputs scoring just under the threshold: the backdoor's heads also react
to clean reviews' rare words, and only the answer's margin tells a trigger among them (movies
BadNets seed 1: 91.5 % caught without it, 96.5 % with it, every group still within 2 %).
A decoder reads the last prompt token: how much of its row the first-token sink takes moves with
length and content, and a row over few keys concentrates for want of keys, so the whole row's
entropy is read against its key count (row evenness); a LoRA backdoor spreads over many heads,
so the mean of the two most collapsed heads scores, which one odd head on a clean input cannot
reach alone. It calibrates with the encoder's coverage variants, code (on SmolLM2 SMS BadNets a
Go line appended to a message moved heads the backdoor does not use past the threshold) and a
prompt's first few words, and with a run of a prompt's words said twice (without them 2-3 % of
SMS messages written twice crossed on some builds). The short variants set the bar of short
inputs as length bands did before (short chat messages, "Yup ok...", crossed a threshold set on
the calibration split's longer ones). Of the 396 decoder settings measured on eight
SmolLM2 models, 43 keep every group (held-out clean, five specificity controls, unseen traffic)
within 2 % on all eight; this one, then without `c_blocks`, keeps them within 1.5 %, catches
96.4-99.5 % of BadNets on movies and on both SMS builds and 91 % of movies composite, and ranks
AddSent best of those (AUROC 0.845). The previous default (top 3, code variants only, length
bands) caught 94.6 % of SMS BadNets seed 0 and let 2-3 % of repeated messages through on two
builds. On three builds it
was not chosen on, every group stays within 1.5 %, and a second movies BadNets build is caught
at 80 % (no setting of the grid catches more than 86 % of it with every group within 2 %).
The `other_code` control, code in languages none of this was chosen with, crossed that setting
at 2.5-3.5 % on four SmolLM2 builds; calibrating beside C headers' one-line blocks as well
(`c_blocks`, on a draw of its own, which may raise the threshold but never lower it) holds it
within 2 % on all of them, with the same or higher TPR on every SmolLM2 backdoor measured. Of
all their groups, only one rebuild of movies BadNets lets more through: 2.5 % of its long
inputs, 1.5 % on a second rebuild (docs/BENCHMARKS.md, "The decoder default with C blocks").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreDefaults:
    families: tuple[str, ...]
    top_k: int  # heads averaged into the collapse score
    length_adjust: bool  # features regressed on log input length first
    per_head: bool = False  # each head's families averaged before the top-k
    # The kinds of coverage variants (detect/coverage.py) calibrated on beside the joined ones:
    # code sources, and `short`; none: the prompts alone.
    coverage: tuple[str, ...] = ()
    length_bands: bool = False  # each content-length band of the prompts holds the target FPR too
    # Inputs scoring just under the threshold are judged by how surely the model answers them too.
    answer_gate: bool = False


DEFAULTS = {
    "encoder": ScoreDefaults(families=("row_entropy", "row_max"), top_k=2, length_adjust=False, per_head=True,
                             coverage=("python", "c", "short"), answer_gate=True),
    "decoder": ScoreDefaults(families=("row_evenness",), top_k=2, length_adjust=False,
                             coverage=("python", "c", "c_blocks", "short", "repeat")),
}


def score_defaults(kind: str) -> ScoreDefaults:
    return DEFAULTS[kind]
