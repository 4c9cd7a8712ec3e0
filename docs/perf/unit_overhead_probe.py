"""Issue 22 probe: per-call fwd+bwd cost of one unit vs SiLU at 1K-256K elements (autograd.grad, 1 thread, CPU time).

Usage: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2000000000:glibc.malloc.trim_threshold=4000000000 \\
    python docs/perf/unit_overhead_probe.py
"""
import time, os, torch, adact, sys
from torch import nn
torch.set_num_threads(1)
def t(f, n=200):
    for _ in range(20): f()
    ts=[]
    for r in range(9):
        a=time.process_time()
        for _ in range(n): f()
        ts.append((time.process_time()-a)/n*1e6)
    return sorted(ts)[4]
from adact.fused import native_op; native_op.native_op()
from adact.fused.keys import dispatch_key
from adact.fused.dispatch import choose
for n in (1024, 16384, 65536, 262144):
    x=torch.randn(n, requires_grad=True); g=torch.randn(n)
    u=adact.AdAct().train(); s=nn.SiLU()
    ch=choose(dispatch_key(x, u.logits, u.prelu_weight, tuple(u.candidates), True))
    P=list(u.parameters())
    a=t(lambda: torch.autograd.grad(s(x), [x], g))
    b=t(lambda: torch.autograd.grad(u(x), [x]+P, g))
    c=t(lambda: torch.autograd.grad(ch.direct(x, u.logits, u.prelu_weight), [x]+P, g))
    lgd=u.logits.detach().requires_grad_(False)
    c2=t(lambda: torch.autograd.grad(ch.direct(x, lgd, u.prelu_weight.detach()), [x], g))
    print(f"n={n}: silu {a:.1f}  unit {b:.1f} (x{b/a:.2f})  direct {c:.1f}  direct x-only {c2:.1f}")
