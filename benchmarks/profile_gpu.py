"""Where the GPU time goes: kernel launches, GPU-busy time and wall time per forward, ours beside timm.

    python benchmarks/profile_gpu.py pvt_v2_b0 pvt_v2_b2 -b 8 64 --dtype bfloat16 --channels-last

For each (model, batch) it prints, per implementation, the wall time of one inference forward, the sum
of its CUDA kernel times, how many kernels it launched, and the five costliest kernels. A wall time far
above the kernel time means the forward is bound by launches and Python, not by the GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pvt.bench import Case, reference_model
from pvt.models.registry import create_model


def _forward(model, x, dtype):
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        return model(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=[8])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    for name in args.models:
        ours = create_model(name).cuda().eval()
        impls = {"pvt": ours}
        try:
            impls["timm"] = reference_model("timm", name, ours).cuda()
        except (ImportError, ValueError) as e:
            print(f"# timm skipped: {e}")
        for bs in args.batch_size:
            x = torch.randn(bs, 3, args.img_size, args.img_size, device="cuda")
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
                impls = {k: m.to(memory_format=torch.channels_last) for k, m in impls.items()}
            for impl, m in impls.items():
                for _ in range(5):
                    _forward(m, x, dtype)
                torch.cuda.synchronize()
                walls = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    _forward(m, x, dtype)
                    torch.cuda.synchronize()
                    walls.append(time.perf_counter() - t0)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    _forward(m, x, dtype)
                    torch.cuda.synchronize()
                kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                busy = sum(e.device_time for e in kernels) / 1e3
                by_name: dict[str, float] = {}
                for e in kernels:
                    by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e3
                top = sorted(by_name.items(), key=lambda kv: -kv[1])[: args.top]
                print(f"{name} b{bs} {impl:<5} wall {statistics.median(walls) * 1e3:7.2f} ms  "
                      f"kernels {busy:7.2f} ms  launches {len(kernels)}")
                for k, ms in top:
                    print(f"      {ms:7.3f} ms  {k[:110]}")


if __name__ == "__main__":
    main()
