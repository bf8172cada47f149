import type { Kernels } from '../backend.js';
import { attentionBwd, attentionDecode, attentionFwd } from './attention.js';
import { gemm, gemmAtB, gemmBf16, gemv, gemvBf16 } from './gemm.js';
import {
  adamwStep, addVec, crossEntropyRows, geluTanhBwd, geluTanhFwd, rmsNormBwd, rmsNormFwd, ropeApply, siluBwd, siluFwd, swigluBwd, swigluFwd,
} from './pointwise.js';

/** The pure-TypeScript kernels: the reference every native kernel is tested against. */
export const jsKernels: Kernels = {
  name: 'js', gemm, gemmBf16, gemmAtB, gemv, gemvBf16, attentionFwd, attentionBwd, attentionDecode,
  crossEntropyRows, swigluFwd, swigluBwd, siluFwd, siluBwd, geluTanhFwd, geluTanhBwd,
  rmsNormFwd, rmsNormBwd, ropeApply, adamwStep, addVec,
};
