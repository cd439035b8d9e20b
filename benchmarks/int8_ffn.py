"""int8 on CPUs without VNNI / AVX-512: what the convolutional FFN's depth-wise conv + GELU costs, and
the alternatives tried for it (docs/speed.md, "int8 on AVX2: where the time goes").

Part 1 (``--map``): one ``(B, C, H, W)`` channels-last map through the 3x3 depth-wise convolution, as the
CPU path runs it (oneDNN, exact GELU fused) and as the alternatives would: no GELU, ATen's GELU after it
(in place), oneDNN's tanh-approximate GELU, and oneDNN's u8 x s8 depth-wise convolution
(``torch.ops.onednn.qconv2d_pointwise``, float32 or uint8 out; it takes no GELU post-op).

Part 2 (models): one process, interleaved rounds: timm's float32, ours float32, ours static int8 with
each GELU variant in its depth-wise convolutions (swapped in for the fused kernel; ``none`` drops the
GELU: wrong results, the bound of what any cheaper GELU could gain; ``split N``: the exact kernel on N
images at a time). Prints each one's logits cosine vs timm float32 and timm's time over its time.

    python benchmarks/int8_ffn.py --map 8 256 56 56 --threads 1
    python benchmarks/int8_ffn.py pvt_v2_b0 -b 8 --threads 1 --rounds 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

CONV = torch.ops.mkldnn._convolution_pointwise


def _dw(x, w, b, attr="none", algorithm="none"):
    c = x.shape[1]
    return CONV(x, w, b, [1, 1], [1, 1], [1, 1], c, attr, [], algorithm)


GELUS = {
    "erf (fused)": lambda x, w, b: _dw(x, w, b, "gelu"),
    "aten gelu_ after": lambda x, w, b: torch.ops.aten.gelu_(_dw(x, w, b)),
    "tanh (fused)": lambda x, w, b: _dw(x, w, b, "gelu", "tanh"),
    "none": _dw,
}


def _rounds(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Interleaved timings (alternating order), after two untimed calls of each."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f(), f()
    keys = list(fns)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return times


def one_map(b: int, c: int, h: int, w: int, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, 3, 3, generator=g) * 0.3
    bias = torch.randn(c, generator=g) * 0.1
    # the int8 form: uint8 input (asymmetric, per tensor), int8 weight (symmetric, per channel)
    lo, hi = x.min().item(), x.max().item()
    xs = (hi - lo) / 255
    xz = round(-lo / xs)
    qx = torch.clamp(torch.round(x / xs) + xz, 0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    ws = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)
    qw = torch.round(weight / ws[:, None, None, None]).clamp(-127, 127).to(torch.int8)
    packed = torch.ops.onednn.qconv_prepack(qw, ws, xs, xz, [1, 1], [1, 1], [1, 1], c, list(x.shape))
    wz = torch.zeros(c, dtype=torch.long)
    exact = _dw(x, weight, bias, "gelu")
    out_scale = (exact.max() - exact.min()).item() / 255  # uint8 out: the exact output's range
    out_zero = round(-exact.min().item() / out_scale)

    def qconv(out_scale=1.0, out_zero=0, out_dtype=torch.float32):
        return torch.ops.onednn.qconv2d_pointwise(qx, xs, xz, packed, ws, wz, bias, [1, 1], [1, 1], [1, 1], c,
                                                  out_scale, out_zero, out_dtype, "none", [], None)

    fns = {k: (lambda f=f: f(x, weight, bias)) for k, f in GELUS.items()}
    fns["int8 dw, f32 out, no GELU"] = qconv
    fns["int8 dw, u8 out, no GELU"] = lambda: qconv(out_scale, out_zero, None)
    with torch.inference_mode():
        for k in ("aten gelu_ after", "tanh (fused)"):
            print(f"{k}: max|diff| vs exact {(GELUS[k](x, weight, bias) - exact).abs().max().item():.2e}")
        times = _rounds(fns, rounds)
    print(f"map {b}x{c}x{h}x{w}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    for k, v in times.items():
        print(f"  {k:28s} {statistics.median(v) * 1e3:8.2f} ms")


def models(name: str, batch: int, rounds: int, gelus: list[str], float32: bool = True) -> None:
    from pvt.accel import accelerate, cpu
    from pvt.accel.quant import quantize
    from pvt.accel.runtime import tune_cpu_allocator
    from pvt.bench.peers import reference_model
    from pvt.models.registry import create_model

    tune_cpu_allocator()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    plain = create_model(name, accelerate=False).eval()
    x = torch.randn(batch, 3, 224, 224, generator=g)
    calibration = torch.randn(8, 3, 224, 224, generator=g)
    timm = reference_model("timm", name, plain)
    ours = accelerate(create_model(name, accelerate=False).eval())
    ours.load_state_dict(plain.state_dict())
    int8 = create_model(name, accelerate=False).eval()
    int8.load_state_dict(plain.state_dict())
    int8 = quantize(int8, calibration)
    exact_kernel = cpu._fused_conv_gelu

    def with_gelu(variant):
        def kernel(x, weight, bias, padding, stride, dilation, groups):
            if variant.startswith("split"):
                n = int(variant.split()[1])
                return torch.cat([exact_kernel(p, weight, bias, padding, stride, dilation, groups) for p in x.split(n)])
            if variant == "erf (fused)":
                return exact_kernel(x, weight, bias, padding, stride, dilation, groups)
            y = CONV(x, weight, bias, padding, stride, dilation, groups, "gelu" if variant == "tanh (fused)" else "none",
                     [], "tanh" if variant == "tanh (fused)" else "none")
            return torch.ops.aten.gelu_(y) if variant == "aten gelu_ after" else y

        def call():
            cpu._fused_conv_gelu = kernel
            try:
                return int8(x)
            finally:
                cpu._fused_conv_gelu = exact_kernel

        return call

    fns = {"timm float32": lambda: timm(x)}
    if float32:
        fns["ours float32"] = lambda: ours(x)
    fns.update({f"ours int8, GELU {k}": with_gelu(k) for k in gelus})
    with torch.inference_mode():
        ref = timm(x)
        for k, f in fns.items():
            y = f()
            cos = F.cosine_similarity(y.flatten(), ref.flatten(), 0).item()
            print(f"{k}: logits vs timm float32 cosine {cos:.6f}, max|diff| {(y - ref).abs().max().item():.2e}")
        times = _rounds(fns, rounds)
    base = times["timm float32"]
    print(f"{name} batch {batch}, {torch.get_num_threads()} threads, {rounds} rounds, load {os.getloadavg()[0]:.2f}")
    for k, v in times.items():
        pair = statistics.median(t / u for t, u in zip(base, v))
        print(f"  {k:32s} {statistics.median(v) * 1e3:8.1f} ms   timm float32 / this {pair:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description="int8 without VNNI: the depth-wise conv + GELU and its alternatives")
    p.add_argument("models", nargs="*", default=[])
    p.add_argument("--map", nargs=4, type=int, metavar=("B", "C", "H", "W"), help="time one depth-wise map instead")
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--gelu", nargs="+", default=list(GELUS),
                   help="int8 variants to time: " + ", ".join(GELUS) + "; 'split N': the exact kernel per N images")
    p.add_argument("--no-float32", action="store_true", help="leave our float32 model out")
    args = p.parse_args()
    for v in args.gelu:
        if v not in GELUS and not (v.startswith("split ") and v[6:].isdigit() and int(v[6:]) > 0):
            p.error(f"--gelu {v!r}: choose from {', '.join(GELUS)}, 'split N'")
    torch.set_num_threads(args.threads)
    if args.map:
        one_map(*args.map, args.rounds)
    for name in args.models or ([] if args.map else ["pvt_v2_b0"]):
        models(name, args.batch_size, args.rounds, args.gelu, not args.no_float32)


if __name__ == "__main__":
    main()
