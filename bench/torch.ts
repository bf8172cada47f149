/** Runs the PyTorch baseline (bench/torch_llama.py) when Debian's python3-torch is installed. */
import { spawnSync } from 'node:child_process';

export function torchAvailable(): boolean {
  return spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

/** Runs bench/torch_llama.py with OpenBLAS's AVX-512 kernels allowed (the strongest PyTorch here). */
export function runTorch(args: string[]): Record<string, number | string> | null {
  if (!torchAvailable()) return null;
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('/usr/bin/python3', ['bench/torch_llama.py', ...args], { env, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) {
    process.stderr.write(`torch baseline failed: ${r.stderr.slice(-2000)}\n`);
    return null;
  }
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last);
  } catch {
    return null;
  }
}
