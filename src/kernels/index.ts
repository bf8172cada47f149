/**
 * The active kernels. The native addon is used when it loaded; otherwise ajuste runs on the js kernels
 * and says so once on stderr. AJUSTE_KERNELS=js forces the js kernels.
 */
import type { Kernels } from './backend.js';
import { jsKernels } from './js/index.js';
import { addonLoadError, nativeKernels } from './native/index.js';
import { profiledKernels, profileWanted } from './profile.js';

let active: Kernels | undefined;

export function kernels(): Kernels {
  if (active) return active;
  active = pick();
  // AJUSTE_PROFILE=1: time every kernel call and print a table at exit (see profile.ts).
  if (profileWanted()) active = profiledKernels(active);
  return active;
}

function pick(): Kernels {
  if (process.env.AJUSTE_KERNELS === 'js') return jsKernels;
  const native = nativeKernels();
  if (native) return native;
  process.stderr.write(
    `ajuste: native kernels unavailable (${addonLoadError().split('\n')[0]}); using the pure-JS kernels, which are much slower. ` +
      'Run `npm run build:native` to build them.\n',
  );
  return jsKernels;
}

/** Replaces the active kernels (tests use this to run the same code on js and native). */
export function setKernels(k: Kernels): void {
  active = k;
}

export type { Kernels } from './backend.js';
export { jsKernels } from './js/index.js';
