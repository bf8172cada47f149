/**
 * Loads the C++ addon (build/Release/ajuste_native.node) and overlays the kernels it exports on the
 * js kernels. Returns null when the addon is missing or fails to load.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Kernels } from '../backend.js';
import { jsKernels } from '../js/index.js';

export interface NativeAddon {
  info(): { version: number; isa?: string; threads?: number };
  [kernel: string]: unknown;
}

let cached: NativeAddon | null | undefined;
let loadError = '';

/** Finds the package root (the folder with package.json) above this file, in src/ or dist/. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('ajuste: cannot find the package root');
    dir = up;
  }
  return dir;
}

export function loadAddon(): NativeAddon | null {
  if (cached !== undefined) return cached;
  try {
    const file = join(packageRoot(), 'build', 'Release', 'ajuste_native.node');
    cached = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (e) {
    loadError = (e as Error).message;
    cached = null;
  }
  return cached;
}

export function addonLoadError(): string {
  return loadError;
}

/** The native backend: every kernel the addon exports, the js one for the rest. */
export function nativeKernels(): Kernels | null {
  const addon = loadAddon();
  if (!addon) return null;
  const k: Record<string, unknown> = { ...jsKernels, name: 'native' };
  for (const name of Object.keys(jsKernels)) {
    if (name !== 'name' && typeof addon[name] === 'function') k[name] = addon[name];
  }
  return k as unknown as Kernels;
}
