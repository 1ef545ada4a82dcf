"""P11: the end-to-end claims on GPUs other than the one the goals name.

The issue's goals name the H100; from 2026-12-03 the lent GPU is an H200. Rows measured there
(``speedup_<gpu>.csv`` for any other ``<gpu>``) are judged against the same goals by the same builders as P1–P4
(`claims_perf_e2e`), but in this claim of their own, each subject tagged with its GPU, so that no H200 row becomes
the "newest run" of an H100 configuration. The layer benchmarks behind "the kernels allow" are the H100's, so
those bounds are left out here rather than borrowed across GPUs.
"""
from __future__ import annotations

import dataclasses

from .claims_perf_e2e import claim_decode, claim_memory, claim_prefill, claim_training
from .claims_perf_inputs import Inputs
from .perf_evidence import Claim, Line

TITLE = "End to end on other GPUs (the lent H200): training, prefill, decode, memory"


def claim_other_gpus(inp: Inputs) -> Claim:
    lines: list[Line] = []
    for gpu, rows in sorted((inp.e2e_other or {}).items()):
        sub = dataclasses.replace(inp, e2e=rows, linear=None, inference=None, ablations=None,
                                  names={**inp.names, "e2e": f"speedup_{gpu}.csv"})
        tag = gpu.upper()
        for builder in (claim_training, claim_prefill, claim_decode, claim_memory):
            for line in builder(sub).lines:
                if line.measure is None:  # the builders' "not measured" placeholders: say nothing for this GPU
                    continue
                lines.append(dataclasses.replace(line, key="P11", subject=f"{tag}: {line.subject}",
                                                 group=f"{tag}: {line.group}" if line.group else "", bound=None))
    if not lines:
        lines.append(Line("P11", "end-to-end rows on a GPU other than the H100", None, None, "—",
                          absent="not run (no `speedup_<gpu>.csv` for another GPU)"))
    return Claim("P11", TITLE, lines, [])
