/**
 * Opt-in kernel profiler: with AJUSTE_PROFILE=1 every kernel call is timed, GEMMs keyed by their shape
 * (M x N x K and the transposes), and a table is printed on stderr when the process exits (or when
 * `printProfile()` is called). Time outside the kernels (JS glue, allocation, GC) is what remains of the
 * wall time between `resetProfile()` and the report. Off by default: the wrapper costs about a
 * microsecond per call.
 */
import type { Kernels } from './backend.js';

interface Entry {
  calls: number;
  ms: number;
  flops: number;
}

const table = new Map<string, Entry>();
let since = performance.now();

function add(key: string, ms: number, flops: number): void {
  let e = table.get(key);
  if (!e) table.set(key, (e = { calls: 0, ms: 0, flops: 0 }));
  e.calls++;
  e.ms += ms;
  e.flops += flops;
}

/** Whether AJUSTE_PROFILE asks for the profiler. */
export function profileWanted(): boolean {
  const v = process.env.AJUSTE_PROFILE;
  return v !== undefined && v !== '' && v !== '0';
}

/** Wraps every function of `k` with a timer. */
export function profiledKernels(k: Kernels): Kernels {
  const out: Record<string, unknown> = { name: k.name };
  for (const [name, fn] of Object.entries(k)) {
    if (typeof fn !== 'function') continue;
    const f = fn as (...a: unknown[]) => unknown;
    if (name === 'gemm' || name === 'gemmBf16') {
      out[name] = (...a: unknown[]) => {
        const [tA, tB, M, N, K] = a as [boolean, boolean, number, number, number];
        const t = performance.now();
        const r = f(...a);
        add(`${name} ${M}x${N}x${K}${tA ? ' tA' : ''}${tB ? ' tB' : ''}`, performance.now() - t, 2 * M * N * K);
        return r;
      };
    } else if (name === 'gemmAtB' || name === 'gemv' || name === 'gemvBf16') {
      out[name] = (...a: unknown[]) => {
        const [M, N, K] = a as [number, number, number];
        const t = performance.now();
        const r = f(...a);
        add(`${name} ${M}x${N}x${K}`, performance.now() - t, 2 * M * N * K);
        return r;
      };
    } else {
      out[name] = (...a: unknown[]) => {
        const t = performance.now();
        const r = f(...a);
        add(name, performance.now() - t, 0);
        return r;
      };
    }
  }
  if (!registered) {
    registered = true;
    process.on('exit', () => printProfile());
  }
  return out as unknown as Kernels;
}
let registered = false;

/** Clears the table and restarts the wall clock (e.g. after a warm-up step). */
export function resetProfile(): void {
  table.clear();
  since = performance.now();
}

/** Prints the table (sorted by time) on stderr and clears it. */
export function printProfile(): void {
  if (table.size === 0) return;
  const wall = performance.now() - since;
  const rows = [...table.entries()].sort((a, b) => b[1].ms - a[1].ms);
  let inKernels = 0;
  const lines = ['ajuste profile (AJUSTE_PROFILE=1): kernel, calls, ms, % of wall, GFLOP/s'];
  for (const [key, e] of rows) {
    inKernels += e.ms;
    const gf = e.flops > 0 ? (e.flops / e.ms / 1e6).toFixed(1) : '';
    lines.push(`  ${key.padEnd(40)} ${String(e.calls).padStart(7)} ${e.ms.toFixed(1).padStart(10)} ${((100 * e.ms) / wall).toFixed(1).padStart(6)}% ${gf.padStart(8)}`);
  }
  lines.push(`  ${'(outside kernels: JS, allocation, GC)'.padEnd(40)} ${''.padStart(7)} ${(wall - inKernels).toFixed(1).padStart(10)} ${((100 * (wall - inKernels)) / wall).toFixed(1).padStart(6)}%`);
  lines.push(`  ${'wall'.padEnd(40)} ${''.padStart(7)} ${wall.toFixed(1).padStart(10)}`);
  process.stderr.write(`${lines.join('\n')}\n`);
  resetProfile();
}
