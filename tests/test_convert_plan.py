"""plan(request, disk) as a table: which steps a conversion takes for each request and folder state, with no I/O.

The folder states are built by hand (Disk is plain data); nothing here reads or writes a file. The end-to-end
behaviour of the same cases, on real files, is in test_convert_pipeline.py and test_faults_convert.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from qrun import settings
from qrun.convert.plan import (
    CheckFreeDisk,
    Checkpoint,
    ConvertUnquantized,
    Disk,
    Download,
    KeepIntermediate,
    Quantize,
    RemoveIntermediate,
    Request,
    ReuseIntermediate,
    ReuseKept,
    UpToDate,
    plan,
)

# A folder that does not exist: plan() must not need one.
OUT = Path("/nonexistent/qrun-plan-test")
Q = "Q4_K_M"


def _request(quant: str, keep_f16: bool = False, *, local: bool = True) -> Request:
    return Request(
        model="qwen-7b-chat",
        quant=quant,
        out_dir=OUT,
        from_dir=OUT / "ckpt" if local else None,
        keep_f16=keep_f16,
        threads=2,
    )


def _disk(weight_type: str = "BF16", *, kept=(), intermediates=(), reusable=(), quant_current=False) -> Disk:
    """A folder state once the checkpoint (of `weight_type`) is on disk."""
    return Disk(
        checkpoint=Checkpoint(fingerprint="f" * 32, weight_type=weight_type),
        quant_output_current=quant_current,
        kept=frozenset(kept),
        intermediates=frozenset(intermediates) | frozenset(reusable),
        reusable=frozenset(reusable),
    )


# (case, request, disk, exact steps)
TABLE = [
    # Nothing to do, or nothing known yet.
    ("up to date", _request(Q), Disk(outputs_up_to_date=True), [UpToDate()]),
    ("up to date, hub: no download", _request(Q, local=False), Disk(outputs_up_to_date=True), [UpToDate()]),
    ("up to date with --keep-f16", _request(Q, True), Disk(outputs_up_to_date=True), [UpToDate()]),
    ("up to date F16", _request("F16"), Disk(outputs_up_to_date=True), [UpToDate()]),
    ("hub checkpoint not fetched", _request(Q, local=False), Disk(), [Download()]),
    ("hub checkpoint not fetched, F16", _request("F16", True, local=False), Disk(), [Download()]),
    # Q4_K_M: the checkpoint's own type is the intermediate, quantized then removed.
    (
        "Q4 fresh, bf16 checkpoint",
        _request(Q),
        _disk("BF16"),
        [CheckFreeDisk("BF16", Q), ConvertUnquantized("BF16"), Quantize(Q), RemoveIntermediate("BF16")],
    ),
    (
        "Q4 fresh, f16 checkpoint",
        _request(Q),
        _disk("F16"),
        [CheckFreeDisk("F16", Q), ConvertUnquantized("F16"), Quantize(Q), RemoveIntermediate("F16")],
    ),
    (
        "Q4 resumes a complete intermediate",
        _request(Q),
        _disk(reusable={"BF16"}),
        [ReuseIntermediate("BF16"), CheckFreeDisk(None, Q), Quantize(Q), RemoveIntermediate("BF16")],
    ),
    (
        "Q4 replaces an incomplete intermediate",
        _request(Q),
        _disk(intermediates={"BF16"}),
        [
            RemoveIntermediate("BF16"),
            CheckFreeDisk("BF16", Q),
            ConvertUnquantized("BF16"),
            Quantize(Q),
            RemoveIntermediate("BF16"),
        ],
    ),
    (
        "Q4 drops an intermediate of the other type",
        _request(Q),
        _disk(reusable={"F16"}),
        [
            RemoveIntermediate("F16"),
            CheckFreeDisk("BF16", Q),
            ConvertUnquantized("BF16"),
            Quantize(Q),
            RemoveIntermediate("BF16"),
        ],
    ),
    (
        "Q4 with both intermediates: keeps its own",
        _request(Q),
        _disk(reusable={"F16", "BF16"}),
        [
            RemoveIntermediate("F16"),
            ReuseIntermediate("BF16"),
            CheckFreeDisk(None, Q),
            Quantize(Q),
            RemoveIntermediate("BF16"),
        ],
    ),
    (
        "Q4 from a kept output of its own type",
        _request(Q),
        _disk(kept={"BF16"}),
        [ReuseKept("BF16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 from a kept output of the other type",
        _request(Q),
        _disk(kept={"F16"}),
        [ReuseKept("F16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 with both kept: its own type first",
        _request(Q),
        _disk("BF16", kept={"F16", "BF16"}),
        [ReuseKept("BF16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 with both kept, f16 checkpoint",
        _request(Q),
        _disk("F16", kept={"F16", "BF16"}),
        [ReuseKept("F16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 prefers a kept output to its intermediate, which stays",
        _request(Q),
        _disk(kept={"F16"}, reusable={"BF16"}),
        [ReuseKept("F16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 kept output, other intermediate still goes",
        _request(Q),
        _disk(kept={"F16"}, intermediates={"F16"}),
        [RemoveIntermediate("F16"), ReuseKept("F16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 output current, kept F16: nothing written",
        _request(Q),
        _disk(kept={"F16"}, quant_current=True),
        [ReuseKept("F16"), CheckFreeDisk(None, None)],
    ),
    # The output came from these files but was not accepted as asked for (another --revision named the same
    # snapshot): today an intermediate is converted and dropped; the table pins it until that changes.
    (
        "Q4 output current, nothing kept",
        _request(Q),
        _disk(quant_current=True),
        [CheckFreeDisk("BF16", None), ConvertUnquantized("BF16"), RemoveIntermediate("BF16")],
    ),
    # Q4_K_M --keep-f16: the intermediate is F16 whatever the checkpoint holds, and becomes an output.
    (
        "Q4 keep fresh, bf16 checkpoint",
        _request(Q, True),
        _disk("BF16"),
        [CheckFreeDisk("F16", Q), ConvertUnquantized("F16"), Quantize(Q), KeepIntermediate("F16")],
    ),
    (
        "Q4 keep: F16 missing, Q4 current",
        _request(Q, True),
        _disk(quant_current=True),
        [CheckFreeDisk("F16", None), ConvertUnquantized("F16"), KeepIntermediate("F16")],
    ),
    (
        "Q4 keep from the kept F16",
        _request(Q, True),
        _disk(kept={"F16"}),
        [ReuseKept("F16"), CheckFreeDisk(None, Q), Quantize(Q)],
    ),
    (
        "Q4 keep ignores a kept BF16",
        _request(Q, True),
        _disk(kept={"BF16"}),
        [CheckFreeDisk("F16", Q), ConvertUnquantized("F16"), Quantize(Q), KeepIntermediate("F16")],
    ),
    (
        "Q4 keep resumes an F16 intermediate",
        _request(Q, True),
        _disk(reusable={"F16"}),
        [ReuseIntermediate("F16"), CheckFreeDisk(None, Q), Quantize(Q), KeepIntermediate("F16")],
    ),
    (
        "Q4 keep drops a BF16 intermediate",
        _request(Q, True),
        _disk(reusable={"BF16"}),
        [
            RemoveIntermediate("BF16"),
            CheckFreeDisk("F16", Q),
            ConvertUnquantized("F16"),
            Quantize(Q),
            KeepIntermediate("F16"),
        ],
    ),
    # F16 / BF16: the intermediate is the output.
    (
        "F16 fresh, bf16 checkpoint",
        _request("F16"),
        _disk("BF16"),
        [CheckFreeDisk("F16", None), ConvertUnquantized("F16"), KeepIntermediate("F16")],
    ),
    (
        "F16 with --keep-f16 is the same",
        _request("F16", True),
        _disk("BF16"),
        [CheckFreeDisk("F16", None), ConvertUnquantized("F16"), KeepIntermediate("F16")],
    ),
    (
        "F16 resumes its intermediate",
        _request("F16"),
        _disk(reusable={"F16"}),
        [ReuseIntermediate("F16"), CheckFreeDisk(None, None), KeepIntermediate("F16")],
    ),
    (
        "F16 output from these files, asked otherwise",
        _request("F16"),
        _disk(kept={"F16"}),
        [ReuseKept("F16"), CheckFreeDisk(None, None)],
    ),
    (
        "F16 ignores a kept BF16",
        _request("F16"),
        _disk(kept={"BF16"}),
        [CheckFreeDisk("F16", None), ConvertUnquantized("F16"), KeepIntermediate("F16")],
    ),
    (
        "F16 drops a BF16 intermediate",
        _request("F16"),
        _disk(intermediates={"BF16"}),
        [RemoveIntermediate("BF16"), CheckFreeDisk("F16", None), ConvertUnquantized("F16"), KeepIntermediate("F16")],
    ),
    (
        "BF16 fresh, f16 checkpoint",
        _request("BF16"),
        _disk("F16"),
        [CheckFreeDisk("BF16", None), ConvertUnquantized("BF16"), KeepIntermediate("BF16")],
    ),
    (
        "BF16 with both intermediates, its own incomplete",
        _request("BF16"),
        _disk(intermediates={"BF16"}, reusable={"F16"}),
        [
            RemoveIntermediate("F16"),
            RemoveIntermediate("BF16"),
            CheckFreeDisk("BF16", None),
            ConvertUnquantized("BF16"),
            KeepIntermediate("BF16"),
        ],
    ),
    (
        "BF16 ignores quant_current (it has no quantized output)",
        _request("BF16"),
        _disk(quant_current=True),
        [CheckFreeDisk("BF16", None), ConvertUnquantized("BF16"), KeepIntermediate("BF16")],
    ),
]


@pytest.mark.parametrize(("request_", "disk", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_plan_table(request_, disk, expected):
    assert plan(request_, disk) == expected


def _all_requests():
    for quant, keep_f16 in itertools.product(("F16", "BF16", Q), (False, True)):
        if not (quant == "BF16" and keep_f16):  # refused by convert_model before any plan
            yield _request(quant, keep_f16)


def _subsets(items=settings.UNQUANTIZED):
    return [frozenset(c) for n in range(len(items) + 1) for c in itertools.combinations(items, n)]


def _all_disks():
    for weight_type, kept, present, quant_current in itertools.product(
        settings.UNQUANTIZED, _subsets(), _subsets(), (False, True)
    ):
        for reusable in _subsets(sorted(present)):
            yield _disk(weight_type, kept=kept, intermediates=present, reusable=reusable, quant_current=quant_current)


def test_every_plan_makes_what_was_asked_and_leaves_no_intermediate_it_used():
    """Invariants over every request x folder state (kept outputs, present and reusable intermediates)."""
    checked = 0
    for request, disk in itertools.product(list(_all_requests()), list(_all_disks())):
        steps = plan(request, disk)
        kinds = [type(step) for step in steps]
        quantized = request.quant not in settings.UNQUANTIZED
        # One source for the unquantized GGUF, found (or made) before it is used.
        sources = [s for s in steps if isinstance(s, (ReuseKept, ReuseIntermediate, ConvertUnquantized))]
        assert len(sources) == 1, (request, disk, steps)
        base = sources[0].weight_type
        # The disk is checked once, before anything is written, for exactly what is written.
        check = kinds.index(CheckFreeDisk)
        assert kinds.count(CheckFreeDisk) == 1
        assert all(k not in (ConvertUnquantized, Quantize, KeepIntermediate) for k in kinds[:check])
        assert steps[check] == CheckFreeDisk(
            base if ConvertUnquantized in kinds else None, request.quant if Quantize in kinds else None
        )
        # The QUANT file is made unless one from these checkpoint files is there.
        assert (Quantize(request.quant) in steps) == (quantized and not disk.quant_output_current)
        # The unquantized output asked for (F16/BF16, or --keep-f16's F16) ends up there.
        if not quantized or request.keep_f16:
            wanted = request.quant if not quantized else "F16"
            assert base == wanted and (ReuseKept(wanted) in steps or steps[-1] == KeepIntermediate(wanted))
        # An intermediate that was used is kept as an output or removed last; none is removed and then used.
        if not isinstance(sources[0], ReuseKept):
            assert steps[-1] in (KeepIntermediate(base), RemoveIntermediate(base))
        source_at = steps.index(sources[0])
        assert RemoveIntermediate(base) not in steps[source_at:-1]
        # Intermediates of another type go; a reused one is not converted again.
        others = {t for t in disk.intermediates if t != base and not isinstance(sources[0], ReuseKept)}
        assert others <= {s.weight_type for s in steps if isinstance(s, RemoveIntermediate)}
        if base in disk.reusable and not isinstance(sources[0], ReuseKept):
            assert sources[0] == ReuseIntermediate(base)
        checked += 1
    assert checked == 5 * 2 * 4 * 9 * 2  # requests x weight types x kept x (present, reusable) x quant current


def test_an_observed_checkpoint_is_never_downloaded_and_a_done_folder_needs_none():
    for request in _all_requests():
        assert Download() not in plan(request, _disk())
        assert plan(request, Disk(outputs_up_to_date=True, checkpoint=None)) == [UpToDate()]
