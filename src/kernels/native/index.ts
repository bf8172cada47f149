/**
 * Loads the C++ addon (build/Release/ajuste_native.node) and overlays the kernels it exports on the
 * js kernels. Returns null when the addon is missing or fails to load.
 */
import type { Kernels } from '../backend.js';
import { jsKernels } from '../js/index.js';
import { addonLoadError, loadAddon, type NativeAddon } from '../../io/addon.js';

export { addonLoadError, loadAddon, type NativeAddon };

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
