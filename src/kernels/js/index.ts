import type { Kernels } from '../backend.js';
import { attentionBwd, attentionFwd } from './attention.js';
import { gemm, gemmBf16 } from './gemm.js';

/** The pure-TypeScript kernels: the reference every native kernel is tested against. */
export const jsKernels: Kernels = { name: 'js', gemm, gemmBf16, attentionFwd, attentionBwd };
