/**
 * Loads the C++ addon (build/Release/ajuste_native.node), once. It lives in io/, the lowest layer, because
 * both io/ (memory-mapping) and kernels/ use it. Returns null when the addon is missing or fails to load.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  info(): { version: number; isa?: string; threads?: number };
  [kernel: string]: unknown;
}

let cached: NativeAddon | null | undefined;
let loadError = '';

/** Finds the package root (the folder with package.json) above this file, in src/ or dist/. */
export function packageRoot(): string {
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

