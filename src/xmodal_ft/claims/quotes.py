"""The papers' sentences the checker tests, word for word, where each stands, and our readings.

The sentences are copied from the papers' text (../shared/papers/rothermel2021_text.md and
survey_finetuning_text.md; tests/test_claims.py checks each occurs there verbatim). A reading is
ours, not the paper's: what the tool tests for the sentence, and why. Where a sentence admits
two readings, both are tested and both verdicts printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LU_LR = 1e-3  # Lu et al.'s learning rate (see claim d1's quote: not every result of theirs used it)
LU = "1e-3"  # as the text prints it
HALF_DECADE = 0.5  # "substantially lower" (claim b): at least this many decades lower


@dataclass(frozen=True)
class Quote:
    """A sentence of a paper, verbatim, and the section it stands in."""

    paper: Literal["rothermel2021", "survey"]
    section: str
    text: str


@dataclass(frozen=True)
class Reading:
    """One operational reading of a claim: what the tool tests, and why it reads it so."""

    key: str
    tests: str
    why: str


@dataclass(frozen=True)
class Claim:
    """A claim: its sentence, related sentences, how many cells it speaks of, its readings."""

    key: str
    quote: Quote
    readings: tuple[Reading, ...]
    cells: Literal["all", "most"]  # the quantifier over cells: every cell, or most of them
    cells_why: str
    also: tuple[Quote, ...] = ()


CONTRIBUTION = Quote(
    "rothermel2021",
    "Introduction, Contribution",
    "However, our results contradict their findings about the benefits of a Frozen Pretrained "
    "Transformer (FPT) model, instead finding that FPTs significantly underperform unfrozen "
    "models, but that Unfrozen Pretrained transformers match or outperform training from scratch.",
)
ACROSS_LRS = "Performance Across Learning Rates"
UNQUALIFIED = "stated without exception: every cell"

ROTHERMEL = (
    Claim(
        "a",
        Quote(
            "rothermel2021",
            "Results",
            "In all cases the Unfrozen variants outperform the Frozen variants significantly.",
        ),
        (
            Reading(
                "each",
                "every unfrozen variant significantly ahead of every frozen one at the "
                "chosen LRs: 4 tests per cell",
                "the literal reading: the plural names both variants of each kind, and the "
                'Contribution says it of FPT against both unfrozen variants ("FPTs '
                'significantly underperform unfrozen models")',
            ),
            Reading(
                "better",
                "the better unfrozen variant (by mean) significantly ahead of each "
                "frozen one: 2 tests per cell",
                "each kind stood for by its best variant, as one picks a method; weaker than "
                '"each" (this tool\'s only reading before)',
            ),
        ),
        "all",
        '"In all cases": every cell',
        also=(CONTRIBUTION,),
    ),
    Claim(
        "b",
        Quote(
            "rothermel2021",
            ACROSS_LRS,
            "Note that the optimal learning rate for the Unfrozen variants is generally "
            "substantially lower than that of the Frozen variants.",
        ),
        (
            Reading(
                "half-decade",
                "per cell, the higher chosen LR of the two unfrozen variants at "
                f"least {HALF_DECADE:g} decade (a factor √10) below the lower chosen LR of the "
                "two frozen ones; the LRs as chosen, no test",
                '"substantially" needs a size: half a decade is one step of the paper\'s '
                "log-spaced grid as we run it (sweep=lr_grid), the smallest gap such a sweep "
                "shows, and a gap in decades does not depend on the grid; the gap per cell "
                "is printed for any other threshold",
            ),
        ),
        "most",
        '"generally": in most cells (more than half of those tested), not all',
    ),
    Claim(
        "c",
        CONTRIBUTION,
        (
            Reading(
                "not-behind",
                "unfrozen pretrained not significantly behind unfrozen random "
                "at the chosen LRs: 1 test per cell",
                '"training from scratch" is the same architecture from random weights with '
                'every weight trained: unfrozen random; "match or outperform" is "not '
                'behind", and with a few seeds a test can only show "not significantly '
                'behind" (it cannot tell a match from too few seeds: the gap is printed)',
            ),
        ),
        "all",
        UNQUALIFIED,
    ),
    Claim(
        "d1",
        Quote(
            "rothermel2021",
            ACROSS_LRS,
            "The dashed red line shows the learning rate used across experiments by Lu et al. "
            "(though some of their Unfrozen Random results came from the Long Range Arena "
            "benchmark where the hyperparameters were tuned separately).",
        ),
        (
            Reading(
                "lu-lr",
                f"at lr {LU}, FPT not significantly behind either unfrozen "
                "variant: 2 tests per cell",
                '"their results" in (d3) are Lu et al.\'s, from this single LR: FPT doing as '
                f"well as the unfrozen variants. {LU} is the learning rate this project "
                "takes for Lu et al.'s (the text only draws it); as the sentence says, some "
                "of their unfrozen random results were tuned separately, not run at it",
            ),
        ),
        "all",
        UNQUALIFIED,
    ),
    Claim(
        "d2",
        Quote(
            "rothermel2021",
            ACROSS_LRS,
            "If choosing a single learning rate to evaluate on, the conclusions drawn depend "
            "on which learning rate is chosen.",
        ),
        (
            Reading(
                "reversal",
                "for some pair of variants, one significantly ahead at a shared LR "
                "of the grid and the other significantly ahead at another: 12 tests per "
                "shared LR (6 pairs, both directions)",
                "a conclusion drawn from one LR is a significant comparison of two variants; "
                "it depends on the LR when another LR of the grid reverses it",
            ),
            Reading(
                "order",
                "the order of the four variants by mean test accuracy differs between "
                "two shared LRs of the grid; no test",
                '"conclusions" read as the ranking a table at one LR shows; weaker: noise '
                "alone reorders close means",
            ),
        ),
        "all",
        UNQUALIFIED,
    ),
    Claim(
        "d3",
        Quote(
            "rothermel2021",
            ACROSS_LRS,
            "And, as seen in the plots, choosing a lower learning rate would have inverted "
            "their results.",
        ),
        (
            Reading(
                "lower-lr",
                f"at some single LR below {LU} shared by the variants, both "
                "unfrozen variants significantly ahead of FPT: 2 tests per LR below "
                f"{LU}, every LR where it holds printed",
                '"their results": FPT not behind the unfrozen variants at Lu et al.\'s LR '
                '(d1); inverted, both unfrozen variants are ahead of it; "a lower learning '
                'rate" is one LR for every variant, not each variant at its own chosen LR '
                "(that is (a))",
            ),
        ),
        "all",
        UNQUALIFIED,
    ),
)

SURVEY = (
    Claim(
        "s",
        Quote(
            "survey",
            "Experiment Results",
            "As we can see from the tables and performance plots, the Fixed, Nesterov, and "
            "Fixed with Triangle Scheduler learning slightly outperformed the Differential "
            "Learning Rate and Gradual Unfreezing implementations, with and without an adapter "
            "added to the transformer.",
        ),
        (
            Reading(
                "group",
                "the three schemes' mean accuracy significantly ahead of the two's, "
                "and none of the three significantly behind any of the two: 7 tests per cell",
                'the schemes as two groups: ahead on average, and with "slightly" no pair '
                "need differ significantly, but none may be reversed",
            ),
            Reading(
                "each",
                "each of the three significantly ahead of each of the two: 6 tests per cell",
                'the literal pairwise reading of "outperformed"',
            ),
        ),
        "all",
        '"with and without an adapter", on both tasks: every cell; "slightly" sets '
        "no size to test (the gaps are printed). Accuracy on CoLA too (the survey reports it, not "
        "MCC); Triangle Scheduler = slanted triangular, Differential = discriminative",
    ),
)

CLAIMS = {c.key: c for c in (*ROTHERMEL, *SURVEY)}
PAPERS = {
    "rothermel2021": 'Rothermel et al. (2021), "A Closer Look at Cross-modal Transfer of '
    'Pretrained Transformers"',
    "survey": 'Lawless & Pachgade, "Survey of Finetuning Techniques"',
}
