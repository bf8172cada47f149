/**
 * npm run bench -- gemm [--no-torch] [--no-4096] [--torch-max-seconds S] [--rounds R (2)]
 *
 * GFLOP/s (median of several runs) of the native gemm / gemmBf16 on square sizes 256..4096 and on the
 * LoRA rank-8 shapes of a 4096-wide layer with 4096 tokens (forward and backward; the two weight gradients dA, dB
 * through gemmAtB, the kernel the LoRA op calls for them, dB as its transpose as the op does), next to torch.mm on
 * the same shapes (bench/torch_gemm.py, run with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed from its
 * environment) when /usr/bin/python3 has torch, and the fraction of this CPU's FMA peak
 * (the addon's fmaPeak: a register-only FMA loop on every pool thread).
 * The two sides run in alternating rounds (ajuste, torch, ajuste, torch, ...) and each figure is the best
 * round's median: this shared machine has good and bad minutes (the same binary measured 88 and 178 GFLOP/s
 * on 1024³ ten minutes apart), and one round each would compare one side's good minute with the other's bad.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Kernels } from '../src/kernels/backend.js';
import { addonLoadError, loadAddon } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';

interface GemmAddon {
  gemm: Kernels['gemm'];
  gemmBf16: Kernels['gemmBf16'];
  gemmAtB: Kernels['gemmAtB'];
  fmaPeak(seconds: number): number;
  gemmIsa(): string;
  info(): { threads?: number };
}

interface Shape {
  name: string;
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  beta: 0 | 1;
  dtype: 'f32' | 'bf16';
  reps: number;
  kind: 'square' | 'lora';
}

interface TorchOut {
  torch: string;
  threads: number;
  blas: string[];
  results: Record<string, { gflops?: number; cpu_gflops?: number; skipped?: string }>;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function shapes(with4096: boolean): Shape[] {
  const out: Shape[] = [];
  const sizes: [number, number][] = [[256, 9], [512, 7], [1024, 5], [2048, 3]];
  if (with4096) sizes.push([4096, 1]);
  for (const dtype of ['f32', 'bf16'] as const)
    for (const [s, reps] of sizes)
      out.push({ name: `${s}^3 ${dtype}`, tA: false, tB: false, M: s, N: s, K: s, beta: 0, dtype, reps, kind: 'square' });
  // LoRA, rank r=8, T=4096 tokens, d=4096: x [T,d], A [r,d], B [d,r], h = x A^T, y += h B^T
  const T = 4096, d = 4096, r = 8;
  const lora: [string, boolean, boolean, number, number, number, 0 | 1][] = [
    ['fwd   h = x·Aᵀ', false, true, T, r, d, 0],
    ['fwd   y += h·Bᵀ', false, true, T, d, r, 1],
    ['bwd  dh = dy·B', false, false, T, r, d, 0],
    ['bwd  dB = dyᵀ·h *', true, false, d, r, T, 0],
    ['bwd  dx += dh·A', false, false, T, d, r, 1],
    ['bwd  dA = dhᵀ·x *', true, false, r, d, T, 0],
  ];
  for (const [what, tA, tB, M, N, K, beta] of lora)
    out.push({ name: `${what} ${M}x${N}x${K}`, tA, tB, M, N, K, beta, dtype: 'f32', reps: 7, kind: 'lora' });
  return out;
}

/** Median GFLOP/s by wall clock, and by CPU time / threads (what an unshared machine would give). */
function timeOurs(a: GemmAddon, s: Shape, rng: Rng, threads: number): { wall: number; cpu: number } {
  const { M, N, K, tA, tB } = s;
  const A = rng.fillUniform(new Float32Array(M * K), -1, 1);
  const Bf = rng.fillUniform(new Float32Array(K * N), -1, 1);
  const Bh = new Uint16Array(Bf.length);
  if (s.dtype === 'bf16') {
    const u = new Uint32Array(Bf.buffer);
    for (let i = 0; i < u.length; i++) Bh[i] = u[i]! >>> 16;
  }
  const C = new Float32Array(M * N);
  const lda = tA ? M : K, ldb = tB ? K : N;
  // LoRA's weight gradients (op(A) = A^T with one side of rank r): the LoRA op calls gemmAtB, for dB on the
  // transposed problem dB^T [r, d] = h^T dy (src/peft/lora-op.ts).
  const atb = s.kind === 'lora' && tA && !tB;
  const run = atb
    ? M <= N
      ? () => a.gemmAtB(M, N, K, 1, A, M, Bf, N, s.beta, C, N)
      : () => a.gemmAtB(N, M, K, 1, Bf, N, A, M, s.beta, C, M)
    : s.dtype === 'bf16'
      ? () => a.gemmBf16(tA, tB, M, N, K, 1, A, lda, Bh, ldb, s.beta, C, N)
      : () => a.gemm(tA, tB, M, N, K, 1, A, lda, Bf, ldb, s.beta, C, N);
  run();
  const times: number[] = [], cpu: number[] = [];
  for (let i = 0; i < s.reps; i++) {
    const c = process.cpuUsage();
    const t = performance.now();
    run();
    times.push((performance.now() - t) / 1000);
    const u = process.cpuUsage(c);
    cpu.push((u.user + u.system) / 1e6 / threads);
  }
  const flops = 2 * M * N * K;
  return { wall: flops / median(times) / 1e9, cpu: flops / median(cpu) / 1e9 };
}

function runTorch(list: Shape[], maxSeconds: number): TorchOut | string {
  if (spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status !== 0)
    return '/usr/bin/python3 cannot import torch';
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const script = join(dirname(fileURLToPath(import.meta.url)), 'torch_gemm.py');
  const spec = list.map(({ name, tA, tB, M, N, K, beta, dtype, reps }) => ({ name, tA, tB, M, N, K, beta, dtype, reps }));
  const r = spawnSync('/usr/bin/python3', [script, JSON.stringify(spec), String(maxSeconds)], {
    env,
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) return `torch_gemm.py failed: ${(r.stderr ?? '').slice(-500)}`;
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as TorchOut;
  } catch {
    return `torch_gemm.py printed no JSON: ${r.stdout.slice(-300)}`;
  }
}

export default function main(args: string[] = []): void {
  const addon = loadAddon() as GemmAddon | null;
  if (!addon || typeof addon.gemm !== 'function') {
    throw new Error(`bench gemm: the native addon did not load (${addonLoadError() || 'no gemm export'}); run \`npm run build:native\``);
  }
  const flag = (f: string) => args.includes(f) || process.argv.includes(f);
  const mi = args.indexOf('--torch-max-seconds');
  const maxSeconds = mi >= 0 ? Number(args[mi + 1]) : 4;
  const list = shapes(!flag('--no-4096'));
  const threads = addon.info().threads ?? 1;

  const peaks: number[] = [];
  for (let i = 0; i < 3; i++) peaks.push(addon.fmaPeak(0.4));
  const peak = median(peaks);
  console.log(`ajuste gemm bench: ${addon.gemmIsa()}, ${threads} threads, FMA peak ${peak.toFixed(1)} GFLOP/s (fmaPeak, median of 3)`);

  const ri = args.indexOf('--rounds');
  const rounds = Math.max(1, ri >= 0 ? Number(args[ri + 1]) : 2);
  const rng = new Rng(7);
  const ours = new Map<string, { wall: number; cpu: number }>();
  let torch: TorchOut | string = flag('--no-torch') ? 'disabled (--no-torch)' : 'not run';
  for (let round = 0; round < rounds; round++) {
    for (const s of list) {
      const g = timeOurs(addon, s, rng, threads);
      const prev = ours.get(s.name);
      ours.set(s.name, prev ? { wall: Math.max(prev.wall, g.wall), cpu: Math.max(prev.cpu, g.cpu) } : g);
    }
    if (flag('--no-torch')) continue;
    const t = runTorch(list, maxSeconds);
    if (typeof t === 'string') {
      torch = t;
      break;
    }
    if (typeof torch === 'string') torch = t;
    else
      for (const [name, r] of Object.entries(t.results)) {
        const p = torch.results[name];
        if (p?.gflops !== undefined && r.gflops !== undefined && r.gflops > p.gflops) torch.results[name] = r;
      }
  }
  if (typeof torch === 'string') console.log(`torch: ${torch}`);
  else
    console.log(`torch ${torch.torch}, ${torch.threads} threads, BLAS: ${torch.blas.join(', ') || 'unknown'}; bf16 = torch.mm of two bf16 tensors`);

  const head = `${'shape (MxNxK)'.padEnd(30)} ${'ajuste'.padStart(8)} ${'% peak'.padStart(7)} ${'(cpu)'.padStart(8)} ${'torch'.padStart(8)} ${'(cpu)'.padStart(8)} ${'ajuste/torch'.padStart(12)}`;
  console.log(`\nGFLOP/s, the best of ${rounds} alternating rounds, each the median of its runs: wall clock; (cpu) = by CPU time / threads`);
  console.log(`${head}\n${'-'.repeat(head.length)}`);
  for (const s of list) {
    const g = ours.get(s.name)!;
    const t = typeof torch === 'string' ? undefined : torch.results[s.name];
    const tg = t?.gflops;
    const pct = s.dtype === 'f32' ? `${((100 * g.wall) / peak).toFixed(0)}%` : '';
    const tcol = tg !== undefined ? tg.toFixed(1) : t?.skipped ? 'skipped' : 'n/a';
    const tcpu = t?.cpu_gflops !== undefined ? t.cpu_gflops.toFixed(1) : '';
    console.log(
      `${s.name.padEnd(30)} ${g.wall.toFixed(1).padStart(8)} ${pct.padStart(7)} ${g.cpu.toFixed(1).padStart(8)} ${tcol.padStart(8)} ${tcpu.padStart(8)} ${(tg ? `${(g.wall / tg).toFixed(2)}x` : '').padStart(12)}`,
    );
  }
  if (typeof torch !== 'string') {
    for (const s of list) {
      const sk = torch.results[s.name]?.skipped;
      if (sk) console.log(`torch skipped ${s.name}: ${sk}`);
    }
  }
  console.log('* through gemmAtB (what the LoRA op calls for its weight gradients); torch: torch.mm on the transposed view');
  console.log('\ntargets: f32 at 1024..4096 >= 75% of the FMA peak and >= torch.mm; LoRA shapes >= 2x torch.mm');
}
