// The AVX-512 GEMM flavour (native/src/gemm_avx512.h: AVX-512F kernels, the AVX512_BF16 path, packing,
// blocking, threads) cannot run on this project's machines or CI (AMD Zen 3: AVX2 only), so the addon's
// own tests never reach it there. This test compiles the same source against a scalar emulation of the
// intrinsics it uses (native/test/avx512_emu.h) into native/test/gemm_emu.cc, a standalone program that
// runs it on ~1200 shapes and paths against a double-precision reference, and checks its summary.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

interface Summary {
  ok: boolean;
  cases: number;
  failures: number;
  emu_selftest: boolean;
  determinism: boolean;
  worst: { f32: number; widen: number; dot: number };
  paths: { f32: [number, number]; widen: [number, number]; dot: [number, number] };
  threads: number;
  seconds: number;
}

const SOURCE = fileURLToPath(new URL('../native/test/gemm_emu.cc', import.meta.url));

describe('AVX-512 GEMM flavour under emulation', () => {
  it('compiles with g++ against the emulated intrinsics and matches the reference on every path and tail', () => {
    const probe = spawnSync('g++', ['--version'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0)
      expect.fail(
        'g++ was not found on PATH: it builds the native addon (node-gyp) and this test of its AVX-512 code. ' +
          'Install it (Debian/Ubuntu: apt-get install g++) and run again.',
      );
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-avx512-emu-'));
    try {
      const exe = join(dir, 'gemm_emu');
      const cc = spawnSync('g++', ['-O1', '-std=c++17', '-pthread', SOURCE, '-o', exe], { encoding: 'utf8' });
      expect(cc.status, `g++ -O1 -std=c++17 ${SOURCE} failed:\n${cc.stderr}`).toBe(0);
      // 3 threads: the pool splits the threaded shapes into uneven ranges (the results must not change)
      const r = spawnSync(exe, [], { encoding: 'utf8', env: { ...process.env, AJUSTE_THREADS: '3' }, timeout: 120_000 });
      expect(r.status, `gemm_emu exited with ${r.status}:\n${r.stdout}\n${r.stderr}`).toBe(0);
      const s = JSON.parse(r.stdout.trim()) as Summary;
      expect(s).toMatchObject({ ok: true, failures: 0, emu_selftest: true, determinism: true, threads: 3 });
      expect(s.cases).toBeGreaterThan(1000);
      // every path ran, solved directly and transposed (C^T with C's columns ldc apart)
      for (const counts of Object.values(s.paths)) for (const n of counts) expect(n).toBeGreaterThan(150);
      // f32 and widened bf16: f32 rounding only; dot: against a reference from A rounded to bf16
      for (const e of Object.values(s.worst)) expect(e).toBeLessThan(1e-5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
