"""Probe every cuSPARSELt algorithm id in isolated processes (a faulting id must not take the others down)."""
import subprocess
import sys

PROBE = r'''
import sys, torch
from slope.kernels import cusparselt as c
from slope.masks import row_mask
ext = c.load_extension()
m, k, n, layout, use_bias, start = map(int, sys.argv[1:7])
for dtype in (torch.float16, torch.bfloat16):
    w = torch.randn(m, k, device="cuda", dtype=dtype); w = w * row_mask(w, 2, 4)
    x = torch.randn(n, k, device="cuda", dtype=dtype); b = torch.randn(m, device="cuda", dtype=dtype) if use_bias else None
    packed = torch.ops.slope_cslt.compress(w, layout)
    top = ext.max_alg_id(m, k, n, dtype, layout, 0)
    ref = x.float() @ w.float().t() + (0 if b is None else b.float())
    for alg in range(start, top + 1):
        print(f"TRY {dtype} alg={alg}/{top}", flush=True)
        try:
            y = torch.ops.slope_cslt.spmm(packed, m, k, x, b, alg, layout); torch.cuda.synchronize()
            err = ((y.float() - ref).norm() / ref.norm()).item()
            print(f"OK {dtype} layout={layout} bias={use_bias} alg={alg} max={top} rel_err={err:.2e}", flush=True)
        except RuntimeError as e:
            print(f"ERR {dtype} layout={layout} bias={use_bias} alg={alg}: {str(e)[:120]}", flush=True)
'''

for layout in (0, 1):
    for bias in ((0, 1) if layout == 0 else (0,)):
        r = subprocess.run([sys.executable, "-c", PROBE, "1024", "512", "64", str(layout), str(bias), "0"],
                           capture_output=True, text=True)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith(("OK", "ERR", "TRY", "Runtime"))]
        print(f"--- layout={layout} bias={bias} rc={r.returncode}")
        print("\n".join(l for l in lines if not l.startswith("TRY")) or (r.stdout + r.stderr)[-1500:])
        if r.returncode:
            print("last tried:", [l for l in lines if l.startswith("TRY")][-1:])
