/**
 * The active kernels. The native addon is used when it loaded; otherwise ajuste runs on the js kernels
 * and says so once on stderr. AJUSTE_KERNELS=js forces the js kernels.
 */
import type { Kernels } from './backend.js';
import { jsKernels } from './js/index.js';
import { addonLoadError, nativeKernels } from './native/index.js';

let active: Kernels | undefined;

export function kernels(): Kernels {
  if (active) return active;
  if (process.env.AJUSTE_KERNELS === 'js') return (active = jsKernels);
  const native = nativeKernels();
  if (native) return (active = native);
  process.stderr.write(
    `ajuste: native kernels unavailable (${addonLoadError().split('\n')[0]}); using the pure-JS kernels, which are much slower. ` +
      'Run `npm run build:native` to build them.\n',
  );
  return (active = jsKernels);
}

/** Replaces the active kernels (tests use this to run the same code on js and native). */
export function setKernels(k: Kernels): void {
  active = k;
}

export type { Kernels } from './backend.js';
export { jsKernels } from './js/index.js';
