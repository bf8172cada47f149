"""PyTorch side of `npm run bench -- gemm`: times torch.mm on the shapes given as JSON in argv[1].

Each shape: {"name", "tA", "tB", "M", "N", "K", "beta", "dtype": "f32"|"bf16", "reps"}. A stored [K,M] when tA
(passed as a transposed view), B stored [N,K] when tB. beta=1 uses C.addmm_(A, B). bf16 multiplies two bf16
tensors (torch has no f32 x bf16 mm). A shape whose estimated time (from the GFLOP/s of the previous shape of the
same dtype) exceeds --max-seconds per run is skipped. Prints one JSON line: the BLAS library loaded, threads,
and per shape the median GFLOP/s or the reason it was skipped.
"""
import json
import os
import sys
import time

from torch_blas import _maybe_reexec_with_openblas

if __name__ == "__main__":
    # As bench/torch_llama.py: OpenBLAS instead of Debian's reference BLAS, idle OpenMP workers passive.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _maybe_reexec_with_openblas(sys.argv)

import torch  # noqa: E402


def blas_libraries():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                base = os.path.basename(path)
                if "blas" in base.lower() or "mkl" in base.lower():
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def main():
    shapes = json.loads(sys.argv[1])
    max_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    last_gflops = {}
    results = {}
    for s in shapes:
        M, N, K = s["M"], s["N"], s["K"]
        dt = torch.bfloat16 if s["dtype"] == "bf16" else torch.float32
        flops = 2.0 * M * N * K
        prev = last_gflops.get(s["dtype"])
        if prev is not None and flops / (prev * 1e9) > max_seconds:
            results[s["name"]] = {"skipped": f"~{flops / (prev * 1e9):.0f} s per run at {prev:.1f} GFLOP/s"}
            continue
        a = (torch.randn(K, M).t() if s["tA"] else torch.randn(M, K)).to(dt)
        b = (torch.randn(N, K).t() if s["tB"] else torch.randn(K, N)).to(dt)
        c = torch.zeros(M, N, dtype=dt)
        if s["beta"] == 1:
            def run():
                c.addmm_(a, b)
        else:
            def run():
                torch.mm(a, b, out=c)
        t = time.perf_counter()
        run()  # warm-up, also the estimate for the repetitions
        first = time.perf_counter() - t
        times, cpu = [], []
        reps = s.get("reps", 5)
        if first * reps > 3 * max_seconds:
            reps = max(1, int(3 * max_seconds / max(first, 1e-9)))
        for _ in range(reps):
            c0 = time.process_time()
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
            cpu.append((time.process_time() - c0) / threads)
        times.sort()
        cpu.sort()
        g = flops / times[len(times) // 2] / 1e9
        last_gflops[s["dtype"]] = g
        results[s["name"]] = {"gflops": g, "cpu_gflops": flops / max(cpu[len(cpu) // 2], 1e-9) / 1e9, "runs": len(times)}
    print(json.dumps({"torch": torch.__version__, "threads": threads, "blas": blas_libraries(), "results": results}))


if __name__ == "__main__":
    main()
