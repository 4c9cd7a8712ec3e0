"""Issue 22 probe: compiled training step of the ConvNet (or resnet18) with ReLU, AdAct as the native op, or AdAct
as a traceable autograd.Function over the plain-torch kernels (the decomposed lowering PERFORMANCE.md rejects).

Usage: python docs/perf/decomposed_compile_probe.py {relu,op,decomp} {convnet,resnet}  (1 thread, CPU time)
"""
import time, sys, torch, adact
from torch import nn
import torch.nn.functional as F
from adact import fused
from adact.fused.backends import _backward_pass
from adact.fused.inductor import mixture_coefficients, parameter_grads, kernel_forward, kernel_backward, compute_dtype
from adact.fused.layout import flat_view, lane_width
from adact.fused.keys import dispatch_key
torch.set_num_threads(1)

class Decomposed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, logits, slope, seed, key):
        channel = key.layout == "channel"; flags = key.flags
        coef = mixture_coefficients(logits, slope, key.candidates, key.training, compute_dtype(key.dtype))
        width = lane_width(x, channel) if flags.noisy else 0
        xf = flat_view(x, x, channel, width)
        lan = torch.arange(width, dtype=torch.int32, device=x.device) if width else None
        y = kernel_forward(xf, coef, seed, lan, flags)
        ctx.save_for_backward(x, logits, slope, seed, coef)
        ctx.key = key
        return y.reshape(x.shape)
    @staticmethod
    def backward(ctx, g):
        x, logits, slope, seed, coef = ctx.saved_tensors
        key = ctx.key; channel = key.layout == "channel"; flags = key.flags
        gx, sums = _backward_pass(g, x, coef, channel, lambda gg, xs, c: kernel_backward(gg, xs, c, seed, flags))
        glogits, gw = parameter_grads(sums, logits, slope, key.candidates, key.training)
        return gx.reshape(x.shape), glogits, gw, None, None

orig = adact.AdAct._forward_dim1
def patched(self, x):
    if torch.compiler.is_compiling():
        key = dispatch_key(x, self.logits, self.prelu_weight, tuple(self.candidates), self.training)
        seed = torch.randint(0, 2**31, (), dtype=torch.int32, device=x.device) if self.training else torch.zeros((), dtype=torch.int32)
        return Decomposed.apply(x, self.logits, self.prelu_weight, seed, key)
    return orig(self, x)

mode = sys.argv[1]
if mode == "decomp": adact.AdAct._forward_dim1 = patched
import torchvision
def make(act):
    m = torchvision.models.resnet18(num_classes=10) if sys.argv[2] == "resnet" else adact.ConvNet(in_channels=3, num_classes=10, image_size=32, activation="relu")
    if act != "relu": m = adact.adactify(m)
    return m
m = make("relu" if mode == "relu" else "adact").train()
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randn(64, 3, 32, 32); y = torch.randint(0, 10, (64,))
@torch.compile
def step():
    out = m(x); loss = F.cross_entropy(out, y); loss.backward(); return loss
def full():
    opt.zero_grad(set_to_none=True); l = step(); opt.step()
t0=time.time()
for _ in range(3): full()
print(mode, "compile+warm s", round(time.time()-t0,1), file=sys.stderr)
ts=[]
for r in range(7):
    a=time.process_time()
    for _ in range(3): full()
    ts.append((time.process_time()-a)/3)
ts.sort(); print(mode, sys.argv[2], "median ms", round(ts[3]*1e3,1))
